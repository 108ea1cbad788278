"""How many CPUs this process may use, for the default CPU thread count of the engines.

PyTorch's and onnxruntime's default thread counts follow the process's CPU affinity but not a
cgroup CPU bandwidth limit (``docker run --cpus=2``, a Kubernetes CPU limit): on a 16-core host a
container limited to 2 CPUs runs 16 busy threads, and PyTorch's OpenMP threads, which spin while
they wait for each other, then wait for descheduled threads at each of the network's thousands of
small operations (README, "CPU threads on a shared machine": two engines of 2 threads each on 2
cores took 1.1-2.2 s per pair instead of 0.56 s). This module imports neither library.
"""

import os
import platform

__all__ = ['cpu_model', 'default_cpu_threads', 'default_threads_reason', 'machine_facts',
           'omp_num_threads', 'usable_cpus']


def usable_cpus():
    """Return the number of CPUs this process may use (an integer >= 1).

    The least of the machine's logical CPUs, the process's CPU affinity (``taskset``, a cpuset),
    its cgroup CPU bandwidth limit (quota / period, rounded up; cgroup v1 or v2) and the
    ``LOKY_MAX_CPU_COUNT`` environment variable where set: joblib's ``loky`` ``cpu_count``.

    Raises:
        ValueError: ``LOKY_MAX_CPU_COUNT`` set to something other than an integer.
        ImportError: joblib is not installed (the message says how to install it).

    """
    text = os.environ.get('LOKY_MAX_CPU_COUNT')
    if text is not None:
        try:
            int(text)
        except ValueError:  # loky's int() would raise it from deep inside
            raise ValueError(f'the environment variable LOKY_MAX_CPU_COUNT must be an integer '
                             f'(the CPUs to use), got {text!r}') from None
    try:
        from joblib.externals.loky import cpu_count
    except ImportError as exc:
        raise ImportError(f'counting the CPUs this process may use needs joblib, which cannot '
                          f'be imported ({exc}): pip install joblib') from exc
    return max(1, int(cpu_count()))


def omp_num_threads():
    """Return the thread count ``OMP_NUM_THREADS`` asks for, or None where it asks for none.

    Its first entry (OpenMP's nested form ``4,2`` asks for 4 at the outer level) where that is a
    positive integer in ASCII digits; None where the variable is unset or not such a value (the
    OpenMP runtime warns about it and ignores it; ``str.isdigit`` alone also takes ``'²'``, which
    ``int`` refuses, and other scripts' digits).
    """
    first = os.environ.get('OMP_NUM_THREADS', '').split(',')[0].strip()
    return int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None


def default_cpu_threads():
    """Return the CPU thread count for an engine given none, or None to keep the libraries'.

    :func:`usable_cpus` where something limits the process below the machine's logical CPUs
    (an affinity, a CPU bandwidth limit, ``LOKY_MAX_CPU_COUNT``); None where nothing does, so that
    PyTorch and onnxruntime keep their own defaults there (which may count physical cores only).
    ``OMP_NUM_THREADS``, where set (:func:`omp_num_threads`), caps it: PyTorch follows that
    variable but a count given to it would override it, and onnxruntime ignores it.
    Raises what :func:`usable_cpus` raises.
    """
    usable = usable_cpus()
    requested = omp_num_threads()
    if requested is not None:
        return min(usable, requested)
    return usable if usable < (os.cpu_count() or 1) else None


def default_threads_reason(threads):
    """Return why :func:`default_cpu_threads` gave ``threads``, for a log line.

    ``OMP_NUM_THREADS`` where it asked for fewer than the CPUs this process may use, else those
    CPUs and what may lower them below the machine's. Raises what :func:`usable_cpus` raises.
    """
    machine = os.cpu_count() or 1
    requested = omp_num_threads()
    if requested is not None and threads == requested < usable_cpus():
        return f'as OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"].strip()} asks'
    if threads < machine:
        return (f'the CPUs this process may use ({machine} on the machine; a CPU affinity, a '
                f'container CPU limit or LOKY_MAX_CPU_COUNT)')
    return f'one per CPU of the machine ({machine})'


def cpu_model(cpuinfo='/proc/cpuinfo'):
    """Return the processor's model name (e.g. ``'AMD EPYC 7763 64-Core Processor'``).

    Read from ``cpuinfo`` (Linux: its first ``model name``, or ``Model`` / ``Hardware`` on ARM
    boards); elsewhere, or without such a line, :func:`platform.processor` (often empty on
    Linux) or the architecture (``x86_64``).
    """
    try:
        with open(cpuinfo, encoding='utf-8', errors='replace') as handle:
            for line in handle:
                key, _, value = line.partition(':')
                if key.strip() in ('model name', 'Model', 'Hardware') and value.strip():
                    return ' '.join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown processor'


def machine_facts():
    """Return the machine a timing ran on, in words: processor, usable and logical CPUs."""
    return (f'{cpu_model()}, {usable_cpus()} usable of {os.cpu_count() or 1} logical CPUs '
            f'({platform.system()} {platform.machine()})')
