"""Measured-table I/O, prediction of measured rows, validation (fitting: see issue 5)."""

from ._predict import predict_table as predict_table
from ._tables import (
    TableError as TableError,
    concat_tables as concat_tables,
    read_kernel_csv as read_kernel_csv,
    select_rows as select_rows,
    write_csv as write_csv,
)
from ._validate import error_table as error_table
