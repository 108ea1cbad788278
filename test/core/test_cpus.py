"""The CPUs a process may use: its affinity and LOKY_MAX_CPU_COUNT lower the default threads."""

import os
import subprocess
import sys

import pytest
from tarfuse_ros.core.cpus import default_cpu_threads, omp_num_threads, usable_cpus

_REPORT = ('import os, sys; {pin}'
           'from tarfuse_ros.core.cpus import default_cpu_threads, usable_cpus; '
           'print(usable_cpus(), default_cpu_threads())')


def _report(pin='', env=None):
    """Return ``(usable_cpus(), default_cpu_threads())`` of a fresh interpreter."""
    environment = dict(os.environ, **(env or {}))
    for name in ('OMP_NUM_THREADS', 'LOKY_MAX_CPU_COUNT'):
        if name not in (env or {}):
            environment.pop(name, None)
    out = subprocess.run([sys.executable, '-c', _REPORT.format(pin=pin)], env=environment,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    usable, default = out.split()
    return int(usable), None if default == 'None' else int(default)


def test_usable_cpus_is_at_most_the_affinity():
    usable = usable_cpus()
    assert 1 <= usable <= len(os.sched_getaffinity(0)) <= os.cpu_count()
    default = default_cpu_threads()
    requested = omp_num_threads()
    if requested is not None:  # OMP_NUM_THREADS set in this test run's environment
        assert default == min(usable, requested)
    else:
        assert default is None or default == usable < os.cpu_count()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs a process with 2 CPUs')
def test_a_process_pinned_to_one_cpu_defaults_to_one_thread():
    one = min(os.sched_getaffinity(0))
    assert _report(pin=f'os.sched_setaffinity(0, {{{one}}}); ') == (1, 1)


@pytest.mark.skipif(os.cpu_count() < 2, reason='needs a machine with 2 CPUs')
def test_loky_max_cpu_count_limits_the_default_threads():
    assert _report(env={'LOKY_MAX_CPU_COUNT': '1'}) == (1, 1)


@pytest.mark.parametrize('value', ['abc', '1.5', ''])
def test_a_loky_max_cpu_count_that_is_no_integer_is_named(monkeypatch, value):
    # It raised joblib's "invalid literal for int() with base 10" from inside loky.
    monkeypatch.setenv('LOKY_MAX_CPU_COUNT', value)
    for function in (usable_cpus, default_cpu_threads):
        with pytest.raises(ValueError, match='LOKY_MAX_CPU_COUNT must be an integer .*, got '
                                             f"'{value}'"):
            function()


@pytest.mark.skipif(os.cpu_count() < 2, reason='needs a machine with 2 CPUs')
def test_omp_num_threads_caps_the_default_threads():
    # A limit of 2 CPUs (LOKY_MAX_CPU_COUNT, as a container's quota) gave 2 threads though
    # OMP_NUM_THREADS asked for 1: the engine's count overrode what PyTorch would have taken.
    assert _report(env={'LOKY_MAX_CPU_COUNT': '2', 'OMP_NUM_THREADS': '1'}) == (2, 1)
    usable, _ = _report()
    for value, expected in (('1', 1), ('1,1', 1), (' 1 ', 1), ('64', usable)):
        assert _report(env={'OMP_NUM_THREADS': value}) == (usable, expected), value
    # Not a count: ignored, as the OpenMP runtime does.
    plain = _report()
    for value in ('abc', '0', '-2', ''):
        assert _report(env={'OMP_NUM_THREADS': value}) == plain, value


@pytest.mark.parametrize('value', ['\u00b2', '\u2074,2', '\u0663'])
def test_omp_num_threads_of_digits_that_are_no_ascii_number_is_ignored(monkeypatch, value):
    # str.isdigit() is true for '²' (int() then raised 'invalid literal', which stopped the
    # node and tarfuse-fuse) and for '٣' (int() read 3); the OpenMP runtime ignores either.
    monkeypatch.setenv('OMP_NUM_THREADS', value)
    monkeypatch.delenv('LOKY_MAX_CPU_COUNT', raising=False)
    assert omp_num_threads() is None
    monkeypatch.delenv('OMP_NUM_THREADS')
    expected = default_cpu_threads()
    monkeypatch.setenv('OMP_NUM_THREADS', value)
    assert default_cpu_threads() == expected
