"""The floors the tracking edge is measured against, served the same way (uvicorn, one
process): the cheapest FastAPI endpoints that do the unavoidable part of a track request.

- `/v1/track`: reads the body, parses it with orjson, answers a prebuilt `Response` (the
  honest floor: no validation, no storage).
- `/dict/v1/track`: reads the body and returns a dict through FastAPI's encoder (the floor
  used before 2026-11-23; about 3x slower than the honest one, which flattered the ratio).
"""

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
SUCCESS = Response(b'{"success":true}', media_type="application/json")


@app.post("/v1/track")
async def track(request: Request) -> Response:
    orjson.loads(await request.body())
    return SUCCESS


@app.post("/dict/v1/track")
async def track_dict(request: Request) -> dict[str, bool]:
    await request.body()
    return {"success": True}
