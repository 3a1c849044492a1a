"""Reading the model server's own figures (model_metrics.py): each kind's gauges from exposition text written
as that server writes it (the family names, labels and types its documentation gives), detection, and pages
that are large, odd or hostile."""

from __future__ import annotations

import pytest

from floodwall.inference.model_metrics import (
    KINDS,
    MAX_LINE,
    MAX_SAMPLES,
    ModelMetrics,
    PageError,
    Reading,
    detect,
    parse,
)

# vLLM (V1 engine): gauges labelled by model and engine, a histogram around them, the KV cache as a fraction
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:iteration_tokens_total_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running_extra_family_that_is_not_it 99.0
"""
# vLLM before V1: the same scheduler gauges, the cache as gpu_cache_usage_perc
VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.9
"""
# llama.cpp's llama-server --metrics: unlabelled gauges
LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 33065
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""
# Hugging Face TGI: the router's gauges
TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_count counter
tgi_request_count 1234
"""
# SGLang --enable-metrics: gauges labelled by model
SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 28.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
"""


@pytest.mark.parametrize(("kind", "page", "running", "waiting", "cache"), [
    ("vllm", VLLM, 8.0, 3.0, 0.42), ("vllm", VLLM_V0, 4.0, 0.0, 0.9), ("llamacpp", LLAMACPP, 4.0, 2.0, 0.25),
    ("tgi", TGI, 16.0, 5.0, None), ("sglang", SGLANG, 28.0, 7.0, 0.28)])
def test_each_servers_gauges_summed_over_their_labels(kind: str, page: str, running: float, waiting: float,
                                                      cache: float | None) -> None:
    assert detect(page) == kind
    reading = parse(kind, page, at=1.0)  # type: ignore[arg-type]
    assert reading is not None
    assert (reading.running, reading.waiting, reading.cache, reading.at) == (running, waiting, cache, 1.0)
    # CRLF line ends read alike
    assert parse(kind, page.replace("\n", "\r\n"), at=1.0) == reading  # type: ignore[arg-type]


def test_a_page_without_the_figures_is_none() -> None:
    assert detect("# TYPE go_goroutines gauge\ngo_goroutines 12\n") is None
    assert parse("vllm", "go_goroutines 12\n") is None
    assert parse("vllm", "") is None
    # Ollama has no metrics page: its 404 body is no page of figures either
    assert detect("404 page not found") is None


def test_odd_and_hostile_lines_are_skipped_not_fatal() -> None:
    long_label = 'vllm:num_requests_waiting{model_name="' + "x" * MAX_LINE + '"} 1000.0\n'
    page = (VLLM_V0 + long_label + "vllm:num_requests_waiting{model_name=\"n\"} NaN\n"
            + "vllm:num_requests_waiting{broken 5\n")
    reading = parse("vllm", page)  # the long line, the NaN and the broken one are skipped; the rest count
    assert reading is not None and (reading.running, reading.waiting) == (4.0, 0.0)


def test_only_the_named_families_reach_the_parser() -> None:
    # a page of other families (a histogram of 60,000 lines) is passed over by str.find, not parsed
    noise = "".join(f'vllm:request_latency_bucket{{le="{i}",model_name="m"}} {i}.0\n' for i in range(60_000))
    reading = parse("vllm", noise + VLLM + noise)
    assert reading is not None and reading.running == 8.0


def test_every_kind_names_a_running_gauge() -> None:
    assert set(KINDS) == {"vllm", "llamacpp", "tgi", "sglang"}
    assert all(families.running and families.waiting for families in KINDS.values())


def test_figures_that_are_no_figures_are_skipped_and_a_page_of_too_many_is_not_read() -> None:
    page = VLLM_V0 + ('vllm:num_requests_waiting{model_name="x"} +Inf\n'
                      'vllm:num_requests_waiting{model_name="y"} -3\n'
                      'vllm:num_requests_waiting{model_name="z"} 1e400\n'
                      'vllm:num_requests_running{model_name="w"} 1e308\n'
                      'vllm:num_requests_running{model_name="v"} 1e308\n')
    reading = parse("vllm", page)
    assert reading is not None and reading.waiting == 0.0 and reading.running == 4.0
    many = "".join(f'vllm:num_requests_running{{engine="{i}"}} 1\n' for i in range(MAX_SAMPLES + 1))
    with pytest.raises(PageError):
        parse("vllm", many)


async def test_the_poller_outlives_whatever_the_server_or_admission_does() -> None:
    import asyncio

    pages = iter([VLLM, "vllm:num_requests_running 1\n", "not figures", VLLM])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            body = next(pages, VLLM).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen: list[float] = []

    def observe(reading: Reading) -> None:
        seen.append(reading.running)
        if len(seen) == 1:
            raise OverflowError("admission failed on a reading")

    metrics = ModelMetrics(f"http://127.0.0.1:{port}/metrics", "auto", interval=0.01, on_reading=observe)
    metrics.start()
    try:
        for _ in range(300):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.01)
        assert seen[:2] == [8.0, 1.0] and len(seen) >= 3  # on after an exception, a page without figures
    finally:
        await metrics.stop()
        server.close()
