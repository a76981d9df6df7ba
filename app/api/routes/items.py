from __future__ import annotations

import asyncio
import mimetypes
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from app.api.deps import GalleryDep, ReadAccess, WriteAccess
from app.api.errors import ServiceError, error_responses
from app.schemas import Deleted, GalleryItem, ItemPage, LabelCount, LabelList
from app.services.gallery import Gallery
from app.stores.base import Item

router = APIRouter(tags=["gallery"])


def to_schema(item: Item) -> GalleryItem:
    return GalleryItem(id=item.id, label=item.label, source=item.source, width=item.width,
                       height=item.height, created_at=item.created_at)


def find_item(gallery: Gallery, item_id: int) -> Item:
    item = gallery.get(item_id)
    if item is None:
        raise ServiceError(status.HTTP_404_NOT_FOUND, f"no item with id {item_id}", "not_found")
    return item


@router.get("/labels", response_model=LabelList, dependencies=[ReadAccess],
            responses=error_responses(503), summary="Every label with its number of photos")
def list_labels(gallery: GalleryDep) -> LabelList:
    counts = gallery.labels()
    return LabelList(labels=[LabelCount(label=k, count=v) for k, v in counts.items()],
                     total_items=sum(counts.values()))


@router.get("/items", response_model=ItemPage, dependencies=[ReadAccess],
            responses=error_responses(422, 503),
            summary="Gallery items, paged, optionally for one label")
def list_items(
    gallery: GalleryDep,
    label: Annotated[str | None, Query(max_length=1000)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ItemPage:
    items = gallery.list_items(label)
    return ItemPage(items=[to_schema(i) for i in items[offset : offset + limit]],
                    total=len(items), offset=offset, limit=limit)


ONE_ITEM_ERRORS = error_responses(404, 422, 503)


@router.get("/items/{item_id}", response_model=GalleryItem, dependencies=[ReadAccess],
            responses=ONE_ITEM_ERRORS, summary="One gallery item")
def get_item(item_id: int, gallery: GalleryDep) -> GalleryItem:
    return to_schema(find_item(gallery, item_id))


@router.get("/items/{item_id}/image", dependencies=[ReadAccess],
            response_class=Response, summary="The stored photo itself",
            responses={200: {"content": {"image/*": {}}, "description": "the photo's bytes"},
                       **ONE_ITEM_ERRORS})
def get_item_image(item_id: int, gallery: GalleryDep) -> Response:
    item = find_item(gallery, item_id)
    data = gallery.store.read_photo(item)
    if data is None:
        raise ServiceError(status.HTTP_404_NOT_FOUND,
                           f"the image file of item {item_id} is missing", "image_missing")
    media_type = mimetypes.guess_type(item.path)[0] or "application/octet-stream"
    # A photo never changes under its id: its hash is its ETag.
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": "public, max-age=86400",
                             "ETag": f'"{item.sha256}"'})


@router.delete("/items/{item_id}", response_model=Deleted, dependencies=[WriteAccess],
               responses=ONE_ITEM_ERRORS, summary="Delete one gallery item")
async def delete_item(item_id: int, gallery: GalleryDep) -> Deleted:
    item = find_item(gallery, item_id)
    await asyncio.to_thread(gallery.delete, [item])
    return Deleted(deleted=[item_id])


@router.delete("/labels/{label}", response_model=Deleted, dependencies=[WriteAccess],
               responses=error_responses(404, 422, 503), summary="Delete every photo of a label")
async def delete_label(label: str, gallery: GalleryDep) -> Deleted:
    items = gallery.list_items(label)
    if not items:
        raise ServiceError(status.HTTP_404_NOT_FOUND, f"no label {label!r}", "not_found")
    await asyncio.to_thread(gallery.delete, items)
    return Deleted(deleted=sorted(i.id for i in items))
