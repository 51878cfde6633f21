"""jaxtyping aliases used on public signatures."""

from typing import TypeAlias

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float


FloatScalar: TypeAlias = Float[Array, ""]
FloatScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
BoolScalar: TypeAlias = Bool[Array, ""]
FloatArrayLike: TypeAlias = Float[ArrayLike, "..."] | float | int | np.ndarray
