"""A separate process that subscribes to Image topics and reports what arrived (bag tests).

Usage: python image_listener.py [--reliable] COUNT TOPIC [TOPIC ...]
Prints ``ready`` once subscribed, then one JSON line per received message
(topic, stamp_ns, frame_id, encoding, width, height, first data bytes, receipt time) and exits
after COUNT messages in total or 30 s. Subscribes best effort, as the fusion node does by
default, or reliable with ``--reliable``; with a history of 20 either way (the sensor-data
profile's 5 drops messages of a burst while a starved process is not spinning).
"""

import json
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main(argv):
    reliable = '--reliable' in argv[1:]
    argv = [arg for arg in argv if arg != '--reliable']
    count, topics = int(argv[1]), argv[2:]
    qos = QoSProfile(depth=20, reliability=(ReliabilityPolicy.RELIABLE if reliable
                                            else ReliabilityPolicy.BEST_EFFORT))
    rclpy.init()
    node = rclpy.create_node('tarfuse_test_listener')
    received = []

    def on_image(topic, msg):
        received.append(topic)
        print(json.dumps({
            'topic': topic, 'stamp_ns': msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec,
            'frame_id': msg.header.frame_id, 'encoding': msg.encoding, 'width': msg.width,
            'height': msg.height, 'head': list(bytes(msg.data[:16])), 'wall_ns': time.time_ns(),
        }), flush=True)

    for topic in topics:
        # The player publishes reliable; a best-effort reader matches it, as the node does.
        node.create_subscription(Image, topic, lambda m, t=topic: on_image(t, m), qos)
    print('ready', flush=True)
    deadline = time.monotonic() + 30.0
    while len(received) < count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
