# The riskscore image used by the worker, beat and flower services of compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY tasks ./tasks
RUN pip install . \
    && useradd --create-home --uid 10001 riskscore

# Run from the home folder, not /src, so that Python imports the installed package, and as a user
# without root rights.
USER riskscore
WORKDIR /home/riskscore
CMD ["celery", "-A", "tasks", "worker", "--loglevel=INFO"]
