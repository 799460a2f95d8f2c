FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cdp cdp
COPY ingestion ingestion
COPY rules rules
COPY activation activation
RUN pip install --no-cache-dir .
ENV CDP_DATA_DIR=/data
EXPOSE 8080
CMD ["cdp", "serve", "--host", "0.0.0.0", "--port", "8080"]
