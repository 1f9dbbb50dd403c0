"""The compiled-kernel report: a generated package's Triton kernels compiled for a GPU on a
machine without one, through the real launch path, at a real shape.

capture.py records the launches of one forward and backward (nothing runs); compile.py
compiles each distinct launch for sm_90 or sm_80 and reads registers, spills, shared
memory and how each dot lowered; cost.py holds each kernel's FLOPs and bytes and the
roofline on a named card; report.py makes rows, totals, the CI check, the table and JSON;
worker.py is the child process that captures and compiles; run.py drives it
(`mcgen inspect SPEC --kernels`).
"""

from mcgen.kernels.run import DEFAULT_SHAPE, KernelReportError, kernel_report

__all__ = ["DEFAULT_SHAPE", "KernelReportError", "kernel_report"]
