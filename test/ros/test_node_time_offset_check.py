"""diagnostics.time_offset_window over real DDS: the node finds an IR camera stamped late.

A simulated rig (benchmarks/time_offset.py: a real msrs_det pair seen through a view that pans
and stops) sends two 30 Hz cameras, the IR stamped 60 ms after its capture and the visible
camera at capture, paced in real time, to the node running the shipped model with
``sync.infrared_time_offset`` left at 0. The check runs every 4 s of visible stamps over the
last 8 s and warns after two checks in a row found the offset off; once the cameras stop it
pauses. The IR camera sends its frames raw (mono8), or as a radiometric camera on
image_transport's compressedDepth transport would: 32FC1 kelvin, coded by their inverse
(``infrared.transport: compressedDepth``), which the check decodes as the pairing path does.
"""

from pathlib import Path
import re
import sys
import time

from diagnostic_msgs.msg import DiagnosticStatus
from node_harness import compressed_depth_msg, image_msg, NodeProcess, Probe
from node_harness import random_domain_id, VISIBLE_FRAME
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
import time_offset as simulation  # noqa: E402, I100

pytestmark = pytest.mark.dds
WINDOW_S = 8.0
IR_FRAME = 'infrared_optical_frame'


def _kelvin(frame):
    """Return a rendered 8-bit IR frame as a radiometric camera's temperatures (K, float32)."""
    return (np.float32(280.0) + frame.astype(np.float32) * np.float32(0.2)).astype(np.float32)


# name -> (infrared.transport, the IR message of an 8-bit frame, stamped 0)
IR_FORMS = {
    'raw_mono8': ('raw', lambda frame: image_msg(frame, 'mono8', 0, IR_FRAME)),
    'compressed_depth_32fc1': ('compressedDepth', lambda frame: compressed_depth_msg(
        _kelvin(frame), 0, IR_FRAME, depth_max=400.0, depth_quantization=6000.0)),
}


def _values(status):
    return {kv.key: kv.value for kv in status.values}


@pytest.mark.parametrize('form', list(IR_FORMS))
def test_the_node_reports_the_offset_of_a_late_ir_camera_and_warns_naming_the_parameter(form):
    if not simulation.DATA.is_dir():
        pytest.skip(f'{simulation.DATA} is absent (../shared not beside the checkout)')
    ir, vi = simulation.read_pair('00004N')
    case = simulation.Case('pan', ir_rate=30.0, duration=WINDOW_S + 9.0)  # IR 60 ms late
    recording = simulation.simulate(case, ir, vi, 0, lambda f: np.clip(f, 0, 255).astype(
        np.uint8), view=(240, 180))
    transport, ir_message = IR_FORMS[form]
    # The IR messages made beforehand: encoding them on the way would delay the pacing.
    events = sorted([(stamp, 'ir', ir_message(frame)) for stamp, frame in zip(*recording['ir'])]
                    + [(stamp, 'vi', frame) for stamp, frame in zip(*recording['vi'])],
                    key=lambda e: e[0])
    domain = random_domain_id()
    node = NodeProcess(domain, {'device': 'cpu', 'cpu_threads': 1, 'diagnostics.period': 0.5,
                                'diagnostics.input_timeout': 2.0,
                                'diagnostics.time_offset_window': WINDOW_S,
                                'infrared.transport': transport})
    probe = Probe(domain, transports=(transport, 'raw'))
    try:
        assert probe.wait_for_subscribers(), node.log()
        assert probe.spin_until(lambda: probe.diagnostics, 120.0), node.log()
        first = _values(probe.diagnostics[-1])
        assert first['sync_time_offset_check'].startswith('collecting: 0 of 8 s'), first
        start_ns, start = time.time_ns(), time.monotonic()
        for stamp, camera, item in events:  # paced as the cameras would send them
            while time.monotonic() - start < stamp:
                probe.executor.spin_once(timeout_sec=0.002)
            stamp_ns = start_ns + int(round(stamp * 1e9))
            if camera == 'ir':
                item.header.stamp.sec, item.header.stamp.nanosec = divmod(stamp_ns, 10**9)
                probe.ir_pub.publish(item)
            else:
                probe.visible_pub.publish(image_msg(item, 'bgr8', stamp_ns, VISIBLE_FRAME))

        def estimated():
            return [s for s in probe.diagnostics
                    if ' s over the last 8 s' in _values(s).get('sync_time_offset_check', '')]

        def warned():
            return [s for s in estimated() if 'sync.infrared_time_offset to' in s.message]
        assert probe.spin_until(warned, 30.0), (
            [_values(s)['sync_time_offset_check'] for s in probe.diagnostics[-5:]],
            node.log())
        # One check alone does not warn.
        assert 'sync.infrared_time_offset to' not in estimated()[0].message
        status = warned()[-1]
        check = _values(status)['sync_time_offset_check']
        found = float(re.match(r'([-+0-9.]+) s over', check).group(1))
        assert found == pytest.approx(-0.06, abs=0.02), check
        assert 'set 0 s' in check
        assert status.level == DiagnosticStatus.WARN
        assert 'ms late against the visible ones' in status.message
        assert f'set sync.infrared_time_offset to {found:.3f} (it is 0)' in status.message
        assert 'the check before found -0.0' in status.message
        # The cameras stopped: the check pauses, and its old verdict is no longer shown.
        assert probe.spin_until(lambda: _values(probe.diagnostics[-1])[
            'sync_time_offset_check'].startswith('paused: no visible image for'), 20.0)
        assert 'sync.infrared_time_offset to' not in probe.diagnostics[-1].message
    finally:
        probe.close()
        node.close()
