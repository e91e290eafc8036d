"""ADMM finalize: tied quantization tables, their projection, and the W/G/U state. No Lightning."""
from .state import RHO_SCHEDULES, ADMMState, group_weight
from .tables import on_table, project, table_codes

__all__ = ["ADMMState", "RHO_SCHEDULES", "group_weight", "project", "table_codes", "on_table"]
