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
