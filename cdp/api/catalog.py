"""The product catalog over HTTP: upsert in bulk, read one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body
from pydantic import BaseModel, Field

from cdp.api.common import READ, WRITE, errors, provided, resource_router
from cdp.catalog import MAX_PRODUCTS, Catalog, Product
from cdp.errors import NotFound

API = provided(Catalog)
router = resource_router()


class ProductsIn(BaseModel):
    products: list[Product] = Field(min_length=1, max_length=MAX_PRODUCTS)


class UpsertedOut(BaseModel):
    upserted: int
    back_in_stock: list[str] = Field(description="Products whose stock went from 0 to more")


@router.put(
    "/catalog/products",
    tags=["catalog"],
    response_model=UpsertedOut,
    responses=errors(400),
    summary=f"Add or replace up to {MAX_PRODUCTS} products",
)
def upsert_products(
    body: Annotated[ProductsIn, Body()], _: WRITE, catalog: Catalog = API
) -> dict[str, Any]:
    back = catalog.upsert(body.products)
    return {"upserted": len(body.products), "back_in_stock": back}


@router.get("/catalog/products/{product_id}", tags=["catalog"], response_model=Product,
            responses=errors(404), summary="One product")  # fmt: skip
def show_product(product_id: str, _: READ, catalog: Catalog = API) -> Product:
    product = catalog.get(product_id)
    if product is None:
        raise NotFound(f"no product {product_id}")
    return product
