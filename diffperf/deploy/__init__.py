"""L3: workloads, SLOs, serving schemes and their metrics."""

from ._afd import AFD as AFD, afd_pipeline_time_s as afd_pipeline_time_s
from ._aggregated import Aggregated as Aggregated
from ._disaggregated import (
    Disaggregated as Disaggregated,
    kv_transfer_bytes as kv_transfer_bytes,
    layerwise_overlap_s as layerwise_overlap_s,
)
from ._metrics import (
    METRIC_KEYS as METRIC_KEYS,
    Metrics as Metrics,
    infeasibility_reason as infeasibility_reason,
    metrics_to_dict as metrics_to_dict,
)
from ._queueing import (
    capped_utilisation as capped_utilisation,
    fixed_point as fixed_point,
    mean_wait_s as mean_wait_s,
    prob_wait as prob_wait,
    wait_quantile_s as wait_quantile_s,
)
from ._scheme import (
    AbstractServingScheme as AbstractServingScheme,
    evaluate as evaluate,
    finish_metrics as finish_metrics,
)
from ._served_runs import (
    ServedRunsError as ServedRunsError,
    predict_served_runs as predict_served_runs,
    read_served_csv as read_served_csv,
)
from ._workload import (
    SLO as SLO,
    Workload as Workload,
    WorkloadError as WorkloadError,
    check_workload as check_workload,
    list_workloads as list_workloads,
    load_workload as load_workload,
)
