"""Arrow arrays of embedding vectors: the one way a matrix becomes a vector column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_size_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """An [n, D] matrix as ``fixed_size_list<float32>[D]``, n rows of length D.

    Cast to float32 and made contiguous where needed; otherwise the Arrow array wraps the
    matrix's buffer without a copy and without a Python object per row.
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
