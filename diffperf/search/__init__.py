"""L4: search over deployments (exact grid; relaxations and optimisers build on it)."""

from ._grid import (
    SCHEMES as SCHEMES,
    GridResult as GridResult,
    GridSpace as GridSpace,
    GridTable as GridTable,
    afd_shape_error as afd_shape_error,
    applicable_schemes as applicable_schemes,
    available_schemes as available_schemes,
    canonical_scheme as canonical_scheme,
    default_dtypes as default_dtypes,
    deployment_dict as deployment_dict,
    enumerate_grid as enumerate_grid,
    enumerate_plans as enumerate_plans,
    evaluate_grid as evaluate_grid,
    geometric_ladder as geometric_ladder,
    grid_search as grid_search,
    make_deployment as make_deployment,
    pareto_indices as pareto_indices,
    scheme_class as scheme_class,
    select as select,
)
from ._objective import (
    OBJECTIVES as OBJECTIVES,
    Objective as Objective,
    make_objective as make_objective,
    objective_value as objective_value,
    relaxed_objective as relaxed_objective,
)
from ._optimize import (
    OptimizeResult as OptimizeResult,
    OptimizeSettings as OptimizeSettings,
    SchemeOptimum as SchemeOptimum,
    optimize as optimize,
    optimize_scheme as optimize_scheme,
    optimum_dict as optimum_dict,
)
from ._project import (
    CONSTRAINTS as CONSTRAINTS,
    Requirement as Requirement,
    constraint_ratios as constraint_ratios,
    project as project,
    required_scale as required_scale,
    requirements_table as requirements_table,
)
from ._relax import (
    HARDWARE_PARAMS as HARDWARE_PARAMS,
    HardwareSpace as HardwareSpace,
    RelaxedSpace as RelaxedSpace,
    with_hardware_values as with_hardware_values,
)
from ._sensitivity import (
    RESOURCES as RESOURCES,
    Point as Point,
    Sensitivity as Sensitivity,
    SensitivityError as SensitivityError,
    StaticBatch as StaticBatch,
    elasticities as elasticities,
    set_values as set_values,
    sweep_1d as sweep_1d,
    sweep_2d as sweep_2d,
)
from ._sweep import (
    SweepError as SweepError,
    SweepSpace as SweepSpace,
    load_space as load_space,
    maybe_initialize_distributed as maybe_initialize_distributed,
    run_sweep as run_sweep,
)
