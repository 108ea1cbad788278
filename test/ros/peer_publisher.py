"""A separate process that publishes test messages over DDS (used by the interface tests).

Usage: python peer_publisher.py KIND TOPIC COUNT WIDTH HEIGHT RELIABILITY
KIND is ``image`` (bgr8 sensor_msgs/Image with a known pattern) or ``detections``
(vision_msgs/Detection2DArray with two detections). It waits for a subscriber, publishes COUNT
messages 50 ms apart, then waits until told to stop (stdin closed) so late samples can drain.
"""

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose


def make_image(index, width, height):
    """Return a bgr8 Image whose pixel (0, 0) encodes the index and whose rows form a ramp."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 1] = (np.arange(height, dtype=np.uint32) % 256)[:, None]
    pixels[0, 0, 0] = index
    msg = Image(height=height, width=width, encoding='bgr8', is_bigendian=0, step=width * 3)
    msg.header.frame_id = 'visible_optical_frame'
    msg.header.stamp.sec = 1000 + index
    msg.header.stamp.nanosec = 500
    msg.data = pixels.tobytes()
    return msg


def make_detections(index):
    """Return a Detection2DArray with two detections named after the index."""
    msg = Detection2DArray()
    msg.header.frame_id = 'visible_optical_frame'
    msg.header.stamp.sec = 2000 + index
    for k, name in enumerate(('person', 'car')):
        det = Detection2D()
        det.header = msg.header
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = name
        hyp.hypothesis.score = 0.5 + 0.1 * k
        det.results.append(hyp)
        det.bbox.center.position.x = 10.0 + k
        det.bbox.center.position.y = 20.0 + index
        det.bbox.size_x = 30.0
        det.bbox.size_y = 40.0
        det.id = ''
        msg.detections.append(det)
    return msg


def main(argv):
    kind, topic, count, width, height, reliability = argv[1:7]
    count, width, height = int(count), int(width), int(height)
    rclpy.init()
    node = rclpy.create_node('tarfuse_test_peer')
    qos = QoSProfile(depth=count)
    qos.reliability = (ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
    msg_type = Image if kind == 'image' else Detection2DArray
    publisher = node.create_publisher(msg_type, topic, qos)
    deadline = time.monotonic() + 20.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    print('subscribers', publisher.get_subscription_count(), flush=True)
    for index in range(count):
        publisher.publish(make_image(index, width, height) if kind == 'image'
                          else make_detections(index))
        rclpy.spin_once(node, timeout_sec=0.05)
    print('published', count, flush=True)
    sys.stdin.read()  # keep the writer alive until the test is done
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
