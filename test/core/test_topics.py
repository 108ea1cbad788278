"""The camera_info topic beside an image topic (image_transport's rule), as plain strings."""

import pytest
from tarfuse_ros.core.topics import camera_info_topic


@pytest.mark.parametrize('image, info', [
    # Resolved names: a namespaced node's default, a remapped driver topic, a top-level one.
    ('/rig/visible/image_raw', '/rig/visible/camera_info'),
    ('/camera/color/image_raw', '/camera/color/camera_info'),
    ('/image', '/camera_info'),
    # Names as given (relative or private) keep their kind.
    ('visible/image_raw', 'visible/camera_info'),
    ('image_raw', 'camera_info'),
    ('~/image', '~/camera_info'),
])
def test_the_camera_info_is_the_image_topics_sibling(image, info):
    assert camera_info_topic(image) == info


def test_the_camera_info_of_a_compressed_stream_is_its_base_topics_sibling():
    # The node passes the base topic, the one it appends /compressed to; a transport topic
    # would give a camera_info under the image topic, which no driver publishes.
    base = '/camera/color/image_raw'
    assert camera_info_topic(base) == '/camera/color/camera_info'
    assert camera_info_topic(f'{base}/compressed') == '/camera/color/image_raw/camera_info'


@pytest.mark.parametrize('name', ['', '/', 'camera/'])
def test_a_name_without_a_topic_is_refused(name):
    with pytest.raises(ValueError, match='is not an image topic name'):
        camera_info_topic(name)
