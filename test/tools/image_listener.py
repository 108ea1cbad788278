"""A separate process that subscribes to Image topics and reports what arrived (bag tests).

Usage: python image_listener.py COUNT TOPIC [TOPIC ...]
Prints ``ready`` once subscribed, then one JSON line per received message
(topic, stamp_ns, frame_id, encoding, width, height, first data bytes, receipt time) and exits
after COUNT messages in total or 30 s.
"""

import json
import sys
import time

import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image


def main(argv):
    count, topics = int(argv[1]), argv[2:]
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
        # Sensor-data QoS, as the fusion node subscribes (the player publishes reliable).
        node.create_subscription(Image, topic, lambda m, t=topic: on_image(t, m),
                                 qos_profile_sensor_data)
    print('ready', flush=True)
    deadline = time.monotonic() + 30.0
    while len(received) < count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
