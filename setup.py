"""ament_python set-up for tarfuse_ros."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'tarfuse_ros'


def share(folder, pattern='*'):
    """Install ``folder/pattern`` files under ``share/tarfuse_ros/folder``."""
    files = [path for path in glob(os.path.join(folder, pattern)) if os.path.isfile(path)]
    return (os.path.join('share', PACKAGE, folder), files)


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        share('launch', '*.launch.py'),
        share('config', '*.yaml'),
        share('config', '*.xml'),
        share('models', '*.safetensors'),
        share('models', '*.md'),
        share('rviz', '*.rviz'),
        share('samples/ir'),
        share('samples/vi'),
        share('samples/labels'),
        share('samples/synthetic_misaligned/ir_warp'),
        share('samples', '*.*'),
        # Split lists and pseudo-labels the training configs name (data/...).
        *[share(folder) for folder, _, _ in sorted(os.walk('data'))],
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='tarfuse_ros developers',
    maintainer_email='tarfuse@example.com',
    description='Target-aware fusion of unregistered infrared and visible images for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'fuse_node = tarfuse_ros.ros.fuse_node:main',
            'tarfuse-train = tarfuse_ros.console:train',
            'tarfuse-eval = tarfuse_ros.console:evaluate',
            'tarfuse-make-bag = tarfuse_ros.console:make_bag',
            'tarfuse-play = tarfuse_ros.console:play',
            'tarfuse-demo = tarfuse_ros.console:demo',
            'tarfuse-fuse = tarfuse_ros.console:fuse',
            'tarfuse-export = tarfuse_ros.console:export',
            'tarfuse-pseudo-label = tarfuse_ros.console:pseudo_label',
            'tarfuse-calibrate = tarfuse_ros.console:calibrate',
            'tarfuse-time-offset = tarfuse_ros.console:time_offset',
        ],
    },
)
