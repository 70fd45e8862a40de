"""The erofs differ (``io.containerd.differ.v1.erofs``): layers as EROFS images for the erofs snapshotter."""

from corral.plugins.differs.erofs.differ import ErofsDiffer, is_erofs_media_type

__all__ = ["ErofsDiffer", "is_erofs_media_type"]
