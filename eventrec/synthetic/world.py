"""The latent side of the synthetic ads world: configuration, users, ads, content, pages.

Everything here is a deterministic function of :class:`WorldConfig` (sizes, rates, seed), so the
latent world can be rebuilt from ``world.json`` at any time (``World(WorldConfig(**cfg))``); nothing
latent is written to disk. See ``docs/synthetic_world.md`` for the generative process and formulas.

Internal indices are 0-based (user ``u``, ad ``j``, category ``c`` ...); the files use 1-based ids
(``user_id = u + 1``, ``ad_id = j + 1``, ``category = c + 1`` ...), so that no consumer can get away
with treating an id as a row index by accident.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

DAY = 86_400

# Event type codes (internal) and their names in events.parquet.
AD_CLICK, AD_CONVERSION, CONTENT_VIEW, PAGE_LIKE = 0, 1, 2, 3
EVENT_TYPES = ("ad_click", "ad_conversion", "content_view", "page_like")
PLACEMENTS = ("feed", "story", "sidebar", "search")

# How many of a user's most recent events the probability model reads (see model.py).
HISTORY_LENGTH = 8
# ... and how many of the user's most recent ad clicks and conversions.
STREAM_LENGTH = 4

# Upper bounds of the within-block timing, in seconds. A block is: up to MAX_ORGANIC organic events
# (gaps 0..MAX_ORGANIC_GAP s), then maybe one ad request (1..MAX_REQUEST_GAP s after the last organic
# event), clicks 1..MAX_CLICK_DELAY s after the request, conversions MIN..MAX_CONVERSION_DELAY s after
# their click. A chained block starts 1..MAX_CHAIN_GAP s after the previous block's last event.
MAX_ORGANIC = 8
MAX_ORGANIC_GAP = 180
MAX_REQUEST_GAP = 180
MAX_CLICK_DELAY = 60
MIN_CONVERSION_DELAY = 61
MAX_CONVERSION_DELAY = 600
MAX_CHAIN_GAP = 300
BLOCK_SPAN = (
    MAX_ORGANIC * MAX_ORGANIC_GAP + MAX_REQUEST_GAP + MAX_CLICK_DELAY + MAX_CONVERSION_DELAY + MAX_CHAIN_GAP + 1
)


@dataclass(frozen=True)
class WorldConfig:
    """Every parameter of a synthetic world. Same config (seed included) -> byte-identical files."""

    num_users: int = 10_000
    days: int = 30
    seed: int = 0
    start_timestamp: int = 1_767_225_600  # 2026-01-01T00:00:00Z; hour_of_day is UTC
    num_categories: int = 24
    num_advertisers: int = 400
    num_ads: int = 8_000
    num_contents: int = 50_000
    num_pages: int = 3_000
    num_topics: int = 120
    # Activity: sessions per user and day (mean); per-user multiplier ~ lognormal(sigma), mean 1.
    sessions_per_user_day: float = 0.09
    activity_sigma: float = 0.9
    blocks_per_session: tuple[float, ...] = (0.55, 0.30, 0.15)  # P(1 block), P(2), P(3)
    organic_per_block: float = 2.2  # Poisson mean, capped at MAX_ORGANIC
    like_fraction: float = 0.15  # organic events that are page likes (the rest: content views)
    request_probability: float = 0.85  # a block ends with an ad request
    ads_per_request: tuple[float, ...] = (0.5, 0.35, 0.15)  # P(1 ad), P(2), P(3)
    placement_probs: tuple[float, ...] = (0.55, 0.2, 0.15, 0.1)  # feed, story, sidebar, search
    same_second_probability: float = 0.08  # an organic event in the same second as the previous one
    cotimed_event_probability: float = 0.05  # an organic event at exactly the request's timestamp
    # Ad serving policy (impressions and candidate pools): mass on the user's current interests,
    # on the categories of the last 3 events (retargeting), and on ad popularity alone.
    policy_mix: tuple[float, ...] = (0.5, 0.3, 0.2)
    untracked_advertiser_fraction: float = 0.2  # their conversions are not observed: label null
    evergreen_ad_fraction: float = 0.5  # the rest launch and end within (or around) the period
    # Offline A/B candidates (issue 3): held-out requests after the quantile, K ads each.
    num_candidate_requests: int = 2_000
    candidates_per_request: int = 50
    candidate_quantile: float = 0.8
    # Probability model: intercepts and the scale of the order/co-occurrence terms (0 = a world in
    # which windowed counts lose nothing of the sequence terms; 1 = default).
    click_bias: float = -5.7
    conversion_bias: float = -3.6
    sequence_strength: float = 1.0

    def __post_init__(self) -> None:
        positive = ("num_users", "days", "num_categories", "num_advertisers", "num_ads", "num_contents",
                    "num_pages", "num_topics", "candidates_per_request")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WorldConfig.{name}: expected a positive integer (got {value!r})")
        if self.num_candidate_requests < 0:
            raise ValueError(f"WorldConfig.num_candidate_requests: expected >= 0 (got {self.num_candidate_requests})")
        if self.num_categories > 30_000:
            raise ValueError("WorldConfig.num_categories: at most 30000")
        if self.num_topics < 3 * self.num_categories:
            raise ValueError(f"WorldConfig.num_topics: expected >= 3 * num_categories = {3 * self.num_categories} "
                             f"(got {self.num_topics})")
        if self.num_ads < 2 * self.num_categories:
            raise ValueError(f"WorldConfig.num_ads: expected >= 2 * num_categories = {2 * self.num_categories}")
        for name in ("num_contents", "num_pages", "num_advertisers"):
            if getattr(self, name) < self.num_categories:
                raise ValueError(f"WorldConfig.{name}: expected >= num_categories = {self.num_categories}")
        if self.num_users >= 2**31 // max(self.num_categories, 1):
            raise ValueError("WorldConfig.num_users: too many users for the 64-bit history keys")
        if self.days * DAY >= 2**31:
            raise ValueError("WorldConfig.days: too long")
        for name in ("blocks_per_session", "ads_per_request", "placement_probs", "policy_mix"):
            probs = np.asarray(getattr(self, name), dtype=float)
            if probs.ndim != 1 or probs.size == 0 or (probs < 0).any() or abs(probs.sum() - 1) > 1e-9:
                raise ValueError(f"WorldConfig.{name}: expected probabilities that sum to 1 (got {probs.tolist()})")
        if len(self.placement_probs) != len(PLACEMENTS):
            raise ValueError(f"WorldConfig.placement_probs: one probability per placement {PLACEMENTS}")
        if len(self.ads_per_request) > 3 or len(self.blocks_per_session) > 3:
            raise ValueError("WorldConfig: at most 3 ads per request and 3 blocks per session")
        if len(self.policy_mix) != 3:
            raise ValueError("WorldConfig.policy_mix: three weights (interest, retarget, popularity)")
        for name in ("like_fraction", "request_probability", "same_second_probability",
                     "cotimed_event_probability", "untracked_advertiser_fraction", "evergreen_ad_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"WorldConfig.{name}: expected a probability in [0, 1] (got {value})")
        if not 0 < self.candidate_quantile < 1:
            raise ValueError("WorldConfig.candidate_quantile: expected in (0, 1)")
        if self.sessions_per_user_day <= 0 or self.organic_per_block < 0 or self.activity_sigma < 0:
            raise ValueError("WorldConfig: rates must be positive")
        # Blocks must fit: at most half of the period is spent in blocks (see simulate.py).
        if self.days * DAY < 4 * BLOCK_SPAN:
            raise ValueError("WorldConfig.days: too short")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"WorldConfig: unknown parameters {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @property
    def duration(self) -> int:
        return self.days * DAY


class _GroupSampler:
    """Draw items within groups (e.g. a category) proportionally to item weights, vectorised.

    ``sample(groups, u)`` maps uniforms ``u`` in [0, 1) to items of ``groups`` by inverse CDF over
    the items sorted by group. Every group must hold at least one item with positive weight.
    """

    def __init__(self, item_group: np.ndarray, weight: np.ndarray, num_groups: int, items: np.ndarray | None = None):
        items = np.arange(len(item_group)) if items is None else items
        order = np.argsort(item_group, kind="stable")
        self.items = items[order]
        w = np.asarray(weight, dtype=np.float64)[order]
        self.cum = np.cumsum(w)
        counts = np.bincount(item_group[order], minlength=num_groups)
        if (counts == 0).any():
            raise ValueError(f"sampler group(s) without items: {np.flatnonzero(counts == 0)[:5].tolist()}")
        self.stop = np.cumsum(counts)
        self.begin = self.stop - counts
        cum0 = np.concatenate([[0.0], self.cum])
        self.base = cum0[self.begin]
        self.total = cum0[self.stop] - self.base

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        target = self.base[groups] + u * self.total[groups]
        pos = np.searchsorted(self.cum, target, side="right")
        pos = np.clip(pos, self.begin[groups], self.stop[groups] - 1)
        return self.items[pos]


@dataclass
class World:
    """The latent world built from a config: rebuilt identically from the same config."""

    config: WorldConfig
    seeds: dict = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        root = np.random.SeedSequence([int(cfg.seed), 0xE7E17])
        latent, schedule, sim, candidates = root.spawn(4)
        self.seeds = {"schedule": schedule, "sim": sim, "candidates": candidates}
        rng = np.random.default_rng(latent)
        C = cfg.num_categories
        T = cfg.duration

        # Categories: popularity, a 'funnel' successor (a single cycle: no category is its own), price level.
        self.category_popularity = _normalise(rng.lognormal(0.0, 0.5, C))
        cycle = rng.permutation(C)
        self.next_category = np.empty(C, dtype=np.int64)
        self.next_category[cycle] = np.roll(cycle, -1)
        self.category_log_price = rng.uniform(1.5, 4.5, C)
        self.category_center = rng.normal(0.0, 1.0, (C, 16))

        # Advertisers.
        A = cfg.num_advertisers
        self.advertiser_main_category = np.concatenate([np.arange(C), rng.choice(C, A - C, p=self.category_popularity)])
        self.advertiser_second_category = rng.integers(0, C, A)
        self.advertiser_popularity = rng.lognormal(0.0, 1.0, A)
        self.advertiser_conversion_quality = rng.normal(0.0, 0.4, A)
        self.advertiser_price_offset = rng.normal(0.0, 0.3, A)
        self.advertiser_center = rng.normal(0.0, 1.0, (A, 16))
        untracked = rng.random(A) < cfg.untracked_advertiser_fraction
        self.advertiser_tracks_conversions = ~untracked

        # Ads. The first 2C ads are evergreen ads of category j % C, so that every category always
        # has an active ad; the rest mix evergreen and churning ads (launch/end days).
        N = cfg.num_ads
        adv = rng.choice(A, N, p=_normalise(self.advertiser_popularity))
        u = rng.random(N)
        cat = np.where(u < 0.75, self.advertiser_main_category[adv],
                       np.where(u < 0.95, self.advertiser_second_category[adv], rng.integers(0, C, N)))
        fixed = np.arange(2 * C)
        cat[fixed] = fixed % C
        adv[fixed] = fixed % C  # advertiser c's main category is c
        self.ad_advertiser = adv.astype(np.int64)
        self.ad_category = cat.astype(np.int64)
        log_price = self.category_log_price[cat] + self.advertiser_price_offset[adv] + rng.normal(0.0, 0.5, N)
        self.ad_price = np.round(np.exp(log_price), 2).clip(0.5, None)
        self.ad_quality = rng.normal(0.0, 0.35, N)
        self.ad_popularity = rng.lognormal(0.0, 1.0, N)
        evergreen = rng.random(N) < cfg.evergreen_ad_fraction
        evergreen[fixed] = True
        launch = np.floor(rng.uniform(-0.3, 0.95, N) * cfg.days).astype(np.int64)
        life = np.ceil(rng.uniform(0.1, 0.7, N) * cfg.days).astype(np.int64)
        self.ad_first_day = np.where(evergreen, 0, np.clip(launch, 0, cfg.days - 1))
        self.ad_last_day = np.where(evergreen, cfg.days - 1, np.clip(launch + life, self.ad_first_day, cfg.days - 1))
        emb = (self.category_center[cat] + 0.6 * self.advertiser_center[adv]
               + 0.35 * rng.normal(0.0, 1.0, (N, 16)))
        self.ad_embedding = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

        # Content items (content views): category, popularity, 1-3 topics from the category's own
        # topic block (the last one sometimes from another category's block).
        M = cfg.num_contents
        self.content_category = np.concatenate([np.arange(C), rng.choice(C, M - C, p=self.category_popularity)])
        self.content_popularity = rng.lognormal(0.0, 1.2, M)
        per = cfg.num_topics // C
        n_topics = rng.choice(3, M, p=[0.4, 0.4, 0.2]) + 1
        own = np.argsort(rng.random((M, per)), axis=1)[:, :3] + (self.content_category * per)[:, None]
        other = (self.content_category * per + per + rng.integers(0, cfg.num_topics - per, M)) % cfg.num_topics
        swap = (rng.random(M) < 0.2) & (n_topics >= 2)
        own[np.arange(M), n_topics - 1] = np.where(swap, other, own[np.arange(M), n_topics - 1])
        self.content_num_topics = n_topics.astype(np.int64)
        self.content_topics = own.astype(np.int64)  # [M, 3]; the first content_num_topics are used

        # Pages (page likes).
        P = cfg.num_pages
        self.page_category = np.concatenate([np.arange(C), rng.choice(C, P - C, p=self.category_popularity)])
        self.page_popularity = rng.lognormal(0.0, 1.0, P)

        # Users: interests A (early) and B (late) over categories, a drift time s and width d;
        # interest(t) = (1 - w) A + w B with w = sigmoid((t - s) / d). Click/conversion propensities
        # and an activity multiplier.
        U = cfg.num_users
        alpha = 0.3 * C * self.category_popularity
        early = rng.standard_gamma(alpha, (U, C))
        late = rng.standard_gamma(alpha, (U, C))
        early = early / np.maximum(early.sum(1, keepdims=True), 1e-300)
        late = late / np.maximum(late.sum(1, keepdims=True), 1e-300)
        late = 0.25 * early + 0.75 * late
        self.interest_early = early.astype(np.float32)
        self.interest_late = late.astype(np.float32)
        self.drift_time = rng.uniform(0.15, 1.15, U) * T
        self.drift_width = rng.uniform(1.0, 4.0, U) * DAY
        self.click_propensity = rng.normal(0.0, 0.5, U)
        self.conversion_propensity = rng.normal(0.0, 0.5, U)
        sigma = cfg.activity_sigma
        self.activity = rng.lognormal(-0.5 * sigma * sigma, sigma, U)

        # Samplers.
        self.content_sampler = _GroupSampler(self.content_category, self.content_popularity, C)
        self.page_sampler = _GroupSampler(self.page_category, self.page_popularity, C)
        day_active = [(self.ad_first_day <= d) & (self.ad_last_day >= d) for d in range(cfg.days)]
        self.ad_active = np.stack(day_active)  # [days, N]
        days_of, ads_of = np.nonzero(self.ad_active)
        self.ad_sampler_by_category = _GroupSampler(days_of * C + self.ad_category[ads_of],
                                                    self.ad_popularity[ads_of], cfg.days * C, items=ads_of)
        self.ad_sampler_by_day = _GroupSampler(days_of, self.ad_popularity[ads_of], cfg.days, items=ads_of)

    # ---- latent interests -------------------------------------------------------------------------

    def drift_weight(self, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """w in [0, 1]: how far user ``users`` (0-based) has drifted from A to B at time ``t`` (s from start)."""
        z = (np.asarray(t, dtype=np.float64) - self.drift_time[users]) / self.drift_width[users]
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = sigmoid(z), without overflow warnings

    def interest(self, users: np.ndarray, t: np.ndarray, categories: np.ndarray | None = None) -> np.ndarray:
        """Interest of each user at time t: ``[n, C]`` float64, or ``[n]`` for the given categories."""
        w = self.drift_weight(users, t)
        if categories is None:
            a = self.interest_early[users].astype(np.float64)
            b = self.interest_late[users].astype(np.float64)
            return (1.0 - w)[:, None] * a + w[:, None] * b
        a = self.interest_early[users, categories].astype(np.float64)
        b = self.interest_late[users, categories].astype(np.float64)
        return (1.0 - w) * a + w * b

    def sample_interest_category(self, users: np.ndarray, t: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One category per user drawn from interest(t), by inverse CDF of uniforms ``u``."""
        cdf = np.cumsum(self.interest(users, t), axis=1)
        target = u * cdf[:, -1]
        return np.minimum((cdf <= target[:, None]).sum(axis=1), self.config.num_categories - 1)

    def day_of(self, t: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(t) // DAY, 0, self.config.days - 1).astype(np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / x.sum()


def hour_effect(hour: np.ndarray) -> np.ndarray:
    """Time-of-day effect on the click logit (peak at 21:00 UTC)."""
    return 0.15 * np.cos(2.0 * math.pi * (np.asarray(hour, dtype=np.float64) - 21.0) / 24.0)
