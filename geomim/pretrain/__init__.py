"""GeoMIM pretraining: complementary masking, the two-branch decoder, view transform, losses."""

from geomim.pretrain.camera_branch import CameraBranch
from geomim.pretrain.convert import official_pretrain_to_geomim, pretrain_checkpoint_filter_fn
from geomim.pretrain.decoder import DecoderConfig, GeoMIMDecoder
from geomim.pretrain.masking import complementary_masks
from geomim.pretrain.model import GeoMIMPretrainer, PretrainConfig, PretrainOutput
from geomim.pretrain.teacher import HistogramTeacher, ModuleTeacher, Teacher, TeacherMeta
from geomim.pretrain.teacher_cache import (
    CachedTeacher,
    CacheMismatchError,
    points_source,
    write_teacher_cache,
)
from geomim.pretrain.view_transform import DepthLSS, ViewTransformConfig

__all__ = [
    "CacheMismatchError",
    "CachedTeacher",
    "CameraBranch",
    "DecoderConfig",
    "DepthLSS",
    "GeoMIMDecoder",
    "GeoMIMPretrainer",
    "HistogramTeacher",
    "ModuleTeacher",
    "PretrainConfig",
    "PretrainOutput",
    "Teacher",
    "TeacherMeta",
    "ViewTransformConfig",
    "complementary_masks",
    "official_pretrain_to_geomim",
    "points_source",
    "pretrain_checkpoint_filter_fn",
    "write_teacher_cache",
]
