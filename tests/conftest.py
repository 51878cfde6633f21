import jax


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


# The slowest test files (mostly compiling serving models and their gradients), slowest
# first. Under pytest-xdist (--dist loadfile --no-loadscope-reorder in pyproject.toml) files
# are handed to workers in collection order, so starting these first keeps one long file
# from running alone at the end while the other workers sit idle.
_SLOW_FILES_FIRST = (
    "test_optimize.py",
    "test_serving_gradients.py",
    "test_disaggregated.py",
    "test_afd.py",
    "test_project.py",
    "test_grid.py",
    "test_aggregated.py",
    "test_pipeline_search.py",
    "test_pipeline_des.py",
    "test_calibrate.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
