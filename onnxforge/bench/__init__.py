"""The benchmark harness: ``onnxforge bench``, the scripts in ``benchmarks/`` and the tests.

- ``process``: ``onnxforge serve`` as a process of its own on free ports, stopped with its
  whole process group (:class:`ServerProcess`);
- ``machine``: the CPU, the cores there are to use (affinity and cgroup quota), library
  versions, and what processes use while a measurement runs (``/proc``);
- ``proctree``: a process and its descendants (servers with worker processes): their CPU
  time and memory summed (``/proc``);
- ``load``: a closed-loop load driver, N concurrent clients for a duration or a number of
  requests: latency percentiles, requests/s, rows/s, status counts (:func:`drive`);
- ``levels``: what ``onnxforge bench`` measures, one run per concurrency level;
- ``report``: tables (rich, or Markdown for the scripts) and JSON files.
"""

from onnxforge.bench.levels import Level, levels_table, model_inputs, plot_levels, run_level
from onnxforge.bench.load import Load, Outcome, drive, percentiles_ms
from onnxforge.bench.machine import (
    machine_busy,
    machine_info,
    process_cpu_seconds,
    process_status,
    software_versions,
    wait_quiet,
)
from onnxforge.bench.process import ServerError, ServerProcess
from onnxforge.bench.proctree import process_tree, process_tree_cpu_seconds, process_tree_rss_kib
from onnxforge.bench.report import markdown_table, print_table, table, write_json
from onnxforge.cpus import usable_cpus

__all__ = [
    "Level",
    "Load",
    "Outcome",
    "ServerError",
    "ServerProcess",
    "drive",
    "levels_table",
    "machine_busy",
    "machine_info",
    "markdown_table",
    "model_inputs",
    "percentiles_ms",
    "plot_levels",
    "print_table",
    "process_cpu_seconds",
    "process_status",
    "process_tree",
    "process_tree_cpu_seconds",
    "process_tree_rss_kib",
    "run_level",
    "software_versions",
    "table",
    "usable_cpus",
    "wait_quiet",
    "write_json",
]
