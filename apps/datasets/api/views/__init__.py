"""Datasets API views, one module per concern (urls.py routes to them through this package)."""

from apps.datasets.api.views.budget import (
    BudgetApi,
    ReservationCommitApi,
    ReservationListApi,
    ReservationReleaseApi,
    ReservationSettleApi,
)
from apps.datasets.api.views.datasets import DatasetDetailApi, DatasetListApi
from apps.datasets.api.views.grants import GrantDetailApi, GrantListApi
from apps.datasets.api.views.shared import SharedDetailApi, SharedDownloadApi, SharedListApi, SharedPreviewApi
from apps.datasets.api.views.uploads import UploadCompleteApi, UploadDetailApi, UploadListApi
from apps.datasets.api.views.versions import (
    DeidentifyApi,
    PiiReportApi,
    VersionDetailApi,
    VersionDownloadApi,
    VersionListApi,
    VersionPreviewApi,
)

__all__ = [
    "BudgetApi",
    "DatasetDetailApi",
    "DatasetListApi",
    "DeidentifyApi",
    "GrantDetailApi",
    "GrantListApi",
    "PiiReportApi",
    "ReservationCommitApi",
    "ReservationListApi",
    "ReservationReleaseApi",
    "ReservationSettleApi",
    "SharedDetailApi",
    "SharedDownloadApi",
    "SharedListApi",
    "SharedPreviewApi",
    "UploadCompleteApi",
    "UploadDetailApi",
    "UploadListApi",
    "VersionDetailApi",
    "VersionDownloadApi",
    "VersionListApi",
    "VersionPreviewApi",
]
