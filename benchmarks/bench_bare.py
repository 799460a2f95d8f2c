"""The baseline: a bare FastAPI endpoint that reads the body and answers like Segment."""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/v1/track")
async def track(request: Request) -> dict[str, bool]:
    await request.body()
    return {"success": True}
