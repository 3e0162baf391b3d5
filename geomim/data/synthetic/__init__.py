"""Synthetic nuScenes: small datasets in the exact `v1.0-mini` layout, rendered from a 3D world.

Each scene is a deterministic world (a ground plane z = 0 with a coloured checker texture, and
static boxes) that the six cameras and the LiDAR sample by casting rays into the same geometry, so
projected LiDAR points land on the image content they hit. The official devkit loads the result:

    python -m geomim.data.synthetic OUT_DIR --scenes 2 --samples-per-scene 4
    NuScenes(version="v1.0-mini", dataroot=OUT_DIR)

Frames follow nuScenes: global and ego z up, ego x forward and y left; camera x right, y down,
z forward; rotations are (w, x, y, z) quaternions from a sensor to its parent frame. Key frames
come at 2 Hz; each is preceded by `sweeps_per_sample` LiDAR sweeps at 20 Hz (the first one too,
so every key frame has the same history). Needs numpy, Pillow and tqdm, not the devkit.

In reading order: `world` (the ground, the boxes, ray casting), `rig` (where the sensors sit),
`scene` (a drive and the boxes along its road), `sensors` (images, LiDAR spins, visibility),
`config` (`SyntheticConfig`, the clock), `tables` (nuScenes' vocabulary, tokens, record chains),
`writer` (`generate`: files and tables) and `cli` (`python -m geomim.data.synthetic`).
"""

from geomim.data.cameras import CAMERAS
from geomim.data.synthetic.cli import main
from geomim.data.synthetic.config import SyntheticConfig
from geomim.data.synthetic.rig import LIDAR, Sensor, make_rig
from geomim.data.synthetic.scene import EgoPath, SyntheticScene, build_scene
from geomim.data.synthetic.sensors import render_camera, scan_lidar, visibility_fractions
from geomim.data.synthetic.world import Box, SyntheticWorld
from geomim.data.synthetic.writer import generate

__all__ = [
    "CAMERAS",
    "LIDAR",
    "Box",
    "EgoPath",
    "Sensor",
    "SyntheticConfig",
    "SyntheticScene",
    "SyntheticWorld",
    "build_scene",
    "generate",
    "main",
    "make_rig",
    "render_camera",
    "scan_lidar",
    "visibility_fractions",
]
