"""A model service in Python that emits the span conventions infercol reads, with a small synthetic load.

    pip install -r examples/python/requirements.txt
    python examples/python/model_service.py --otlp http://127.0.0.1:4317 --seconds 30

It needs no web framework: each "request" is handled in-process, exactly as a FastAPI or gRPC handler would wrap
its work. What matters is the spans: a SERVER span per request with `http.response.status_code` and body sizes,
an inner `predict` span (inference time), a `first_token` event and token counts for generation, an `exception`
on a failed prediction (a 5xx), `model.load` at start-up, and `async.enqueue` / `async.queue` spans sharing a
`messaging.message.id` for queued jobs.
"""

import argparse
import os
import random
import socket
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def tracer_for(args, replica):
    resource = Resource.create(
        {
            "service.name": args.model,
            "service.version": args.deployment,
            "service.instance.id": f"{args.model}-py-{replica}",
            "deployment.environment.name": args.environment,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=args.otlp, insecure=True)))
    return provider, provider.get_tracer("model-service")


def predict(tracer, rng, n):
    body = "x" * rng.randint(100, 2000)
    with tracer.start_as_current_span("POST /v1/predict", kind=SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", "POST")
        span.set_attribute("http.route", "/v1/predict")
        span.set_attribute("http.request.body.size", len(body))
        if n % 20 == 1:
            span.set_attribute("http.response.status_code", 400)
            return
        try:
            with tracer.start_as_current_span("predict"):
                time.sleep(rng.lognormvariate(-3.5, 0.6))
                if n % 50 == 3:
                    raise RuntimeError("CUDA out of memory")
        except RuntimeError as e:
            # No status code: the exception event and the ERROR status make it a 5xx.
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, str(e)))
            return
        span.set_attribute("http.response.status_code", 200)
        span.set_attribute("http.response.body.size", 42)


def generate(tracer, rng):
    prompt_tokens = rng.randint(5, 500)
    with tracer.start_as_current_span("POST /v1/generate", kind=SpanKind.SERVER) as span:
        span.set_attribute("gen_ai.operation.name", "text_completion")
        time.sleep(rng.uniform(0.02, 0.08))
        span.add_event("first_token")
        output_tokens = rng.randint(16, 256)
        time.sleep(output_tokens / 2000)
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        span.set_attribute("http.response.status_code", 200)


def queued_job(tracer, rng, n):
    message_id = f"py-job-{os.getpid()}-{n}"
    with tracer.start_as_current_span("async.enqueue", kind=SpanKind.PRODUCER) as span:
        span.set_attribute("messaging.message.id", message_id)
    enqueued = time.time_ns()
    time.sleep(rng.uniform(0.0, 0.05))
    # The queue span starts at enqueue and ends at dequeue.
    span = tracer.start_span("async.queue", kind=SpanKind.CONSUMER, start_time=enqueued)
    span.set_attribute("messaging.message.id", message_id)
    span.end()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--otlp", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"))
    parser.add_argument("--model", default="whisper-large")
    parser.add_argument("--deployment", default="v3")
    parser.add_argument("--environment", default="prod")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()

    provider, tracer = tracer_for(args, 0)
    with tracer.start_as_current_span("model.load"):
        time.sleep(1.0)
    rng = random.Random(7)
    deadline = time.time() + args.seconds
    n = 0
    while time.time() < deadline:
        kind = n % 10
        if kind < 6:
            predict(tracer, rng, n)
        elif kind < 9:
            generate(tracer, rng)
        else:
            queued_job(tracer, rng, n)
        n += 1
        time.sleep(1 / args.rate)
    provider.shutdown()
    print(f"sent {n} requests")


if __name__ == "__main__":
    main()
