"""Topic names the node derives from others, as plain strings (no ROS import, unit tested)."""

__all__ = ['camera_info_topic']


def camera_info_topic(image_topic):
    """Return the ``camera_info`` topic beside the image topic ``image_topic``.

    The convention of image_transport's CameraSubscriber (REP 104): the image topic's
    namespace + ``camera_info``, e.g. ``/camera/color/image_raw`` ->
    ``/camera/color/camera_info`` and ``/image`` -> ``/camera_info``. A relative name gives a
    relative one (``visible/image_raw`` -> ``visible/camera_info``, ``image_raw`` ->
    ``camera_info``), a private one a private one (``~/image`` -> ``~/camera_info``).

    ``image_topic`` is the base topic (``str``), the one a remapping rule names: never a
    transport's ``<base>/compressed``, whose camera_info is the base topic's sibling too.

    Raises ``ValueError`` when ``image_topic`` is empty or ends in ``/`` (no topic name).
    """
    head, slash, name = image_topic.rpartition('/')
    if not name:
        raise ValueError(f'{image_topic!r} is not an image topic name: it is empty or ends '
                         f'in /')
    return f'{head}/camera_info' if slash else 'camera_info'
