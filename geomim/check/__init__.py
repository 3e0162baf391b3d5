"""`python -m geomim.check`: every fused op on every backend usable on this device against its
reference (forward and backward, fp32 and low precision, real or tiny shapes, timed), the LiDAR
teacher's sparse encoder against its CPU result, and one tiny pretraining step per backend.

From Python: `run_check(CheckOptions(device=torch.device("cuda")))` returns the report.
"""

from geomim._lazy import lazy_attributes

# imported on first use: `python -m geomim.check --help` answers before torch loads
__getattr__ = lazy_attributes(
    __name__, dict.fromkeys(("CheckOptions", "run_check"), "geomim.check.runner")
)
__all__ = ["CheckOptions", "run_check"]
