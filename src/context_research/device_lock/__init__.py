"""One engine-starting run per device on a host, and a record of what else ran beside it.

Snakemake's ``resources: engine=1`` only orders the jobs of one Snakemake process; two
invocations (or two SLURM jobs on a shared node) would start two engines on the same device and
measure each other. Every run that starts a real engine therefore holds a **host-wide lock per
device** for as long as its engines live:

* a device is ``cpu`` (every CPU engine), or one GPU (keyed by its NVML UUID, which names the
  same physical GPU in every process and SLURM job; ``gpu<index>`` when NVML cannot tell);
* the lock is ``fcntl.flock`` on ``<lock dir>/<device>.lock``, lock dir
  ``$CONTEXT_RESEARCH_LOCK_DIR`` or ``/tmp/context-research-locks`` (created world-writable and
  sticky, files 0666, so every user of the host shares it). The kernel releases a flock when its
  holder exits, even on SIGKILL: a lock is never left stale;
* the lock belongs to the process (the run), not to an engine: a run that starts several engines
  on one device (E0's restarts, E3's two engines on one GPU) takes it once, re-entrantly;
* the holder writes who it is (pid, experiment, run id, since, command) into the file, so a run
  that finds the device taken can say by whom;
* ``serving.device_lock.mode``: ``wait`` (default) polls and prints a line every
  ``WAIT_REPORT_S`` until the lock is free or ``serving.device_lock.timeout_s`` has passed;
  ``fail`` refuses at once, naming the holder.

``ContentionMonitor`` records, from just before the first engine starts to the end of the run,
the other vLLM engines on the host, the GPU processes on the run's GPUs (NVML), the load average
and how much CPU time other processes used (sampled by a child process at nice 19, so the driver's
client never waits for it); ``RunDeviceGuard`` puts both together for
``experiments.runner.ExperimentRun`` (``device_lock`` and ``contention`` blocks of
``run_metadata.json``, a note when the run was contended).

Modules: ``devices`` (which devices an engine occupies), ``lockfile`` (the lock files and the
process-wide registry: ``acquire``, ``release``), ``processes`` (what runs on the host: other
engines, GPU processes, ours), ``contention`` (the record of a run's samples and its flags),
``sampler`` (the sampler process and the driver's ``ContentionMonitor``; ``python -m
context_research.device_lock sample`` runs it) and ``guard`` (``RunDeviceGuard``).
"""
