"""The long-history preset of the synthetic ads world: configuration and latent structure.

``generate_world(out, preset="long")`` simulates users with histories of ~2k events on average and
a heavy tail to 100k, over half a year, whose click truth depends on **old** events: each user has a
few recurring interests (categories) that are active for a few days, go dormant for weeks and come
back, and the true click probability of an ad rises with the user's engagement with its category
more than two weeks ago (and with a dormant interest that came back, and with an earlier click on
its advertiser), so truncating the history to the most recent events provably costs accuracy.
See ``docs/synthetic_world.md`` (section "The long-history preset").

The ads, advertisers, content and pages are those of the default world's latent structure
(:class:`~eventrec.synthetic.world.World`, built from :meth:`LongConfig.base_config`); the long
preset adds per-user activity, recurring interests with their episodes, and background profiles,
from its own seed stream, so nothing of the default preset's random draws moves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from eventrec.synthetic.world import DAY, World, WorldConfig

# Upper bounds of the long world's timing (seconds): within a session, gaps of 1..MAX_GAP s; at least
# SESSION_GAP s between a session's last event and the next session; a request 1..MAX_REQUEST_GAP s
# after its anchor event; clicks 1..MAX_CLICK_DELAY s after the request; conversions
# MIN..MAX_CONVERSION_DELAY s after their click.
MAX_GAP = 180
SESSION_GAP = 600
MAX_SESSION_EVENTS = 64
MAX_REQUEST_GAP = 180
MAX_CLICK_DELAY = 60
MIN_CONVERSION_DELAY = 61
MAX_CONVERSION_DELAY = 600
# Keys of the episode look-up: row * _ROW + start + _OFFSET (starts lie within +-_OFFSET seconds).
_ROW = np.int64(2**36)
_OFFSET = np.int64(2**34)


@dataclass(frozen=True)
class LongConfig:
    """Every parameter of a long-history world. Same config (seed included) -> byte-identical files."""

    num_users: int = 1_000
    days: int = 180
    seed: int = 0
    start_timestamp: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    num_categories: int = 200
    num_advertisers: int = 1_000
    num_ads: int = 20_000
    num_contents: int = 100_000
    num_pages: int = 10_000
    num_topics: int = 600
    # Activity: organic events per user ~ lognormal with this mean (before capping) and sigma,
    # clipped to [min, max]; events come in sessions of 1 + Poisson(session_events - 1) events.
    mean_events_per_user: float = 2_000.0
    events_sigma: float = 1.6
    min_events_per_user: int = 20
    max_events_per_user: int = 100_000
    session_events: float = 8.0
    # Recurring interests: K categories per user, each alternating active episodes (median
    # episode_days) and dormant gaps (median dormancy_days), both lognormal(median, 0.5).
    recurring_interests: int = 6
    episode_days: float = 3.0
    dormancy_days: float = 24.0
    focus_probability: float = 0.8  # a session starting inside an episode focuses on that interest
    stay_probability: float = 0.75  # an event of a focused session is of the focus category
    background_categories: int = 10  # other categories of a user's background browsing, weights ~ Dirichlet(1)
    like_fraction: float = 0.15
    # Ad requests: Poisson(requests_per_event * organic events) per user, each 1..180 s after a
    # random organic event of the user; 1-3 ads each.
    requests_per_event: float = 0.05
    ads_per_request: tuple[float, ...] = (0.5, 0.35, 0.15)
    placement_probs: tuple[float, ...] = (0.55, 0.2, 0.15, 0.1)
    # Serving policy: a category of the user's last 20 organic events, of the user's whole history
    # (a random past organic event: the platform remembers), or any active ad by popularity.
    policy_mix: tuple[float, ...] = (0.15, 0.45, 0.4)
    untracked_advertiser_fraction: float = 0.2
    evergreen_ad_fraction: float = 0.5
    num_candidate_requests: int = 500
    candidates_per_request: int = 50
    candidate_quantile: float = 0.8
    # Probability model: intercepts, and the scale of the long-memory terms (memory, returning,
    # advertiser clicked/converted before); 0 gives a control world that only reads the last 2 days.
    click_bias: float = -5.7
    conversion_bias: float = -3.2
    memory_strength: float = 1.0

    def __post_init__(self) -> None:
        positive = ("num_users", "days", "num_categories", "num_advertisers", "num_ads", "num_contents",
                    "num_pages", "num_topics", "candidates_per_request", "min_events_per_user",
                    "max_events_per_user", "recurring_interests", "background_categories")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LongConfig.{name}: expected a positive integer (got {value!r})")
        if self.min_events_per_user > self.max_events_per_user:
            raise ValueError("LongConfig.min_events_per_user: must not exceed max_events_per_user")
        if self.recurring_interests + self.background_categories > self.num_categories:
            raise ValueError("LongConfig.recurring_interests: recurring_interests + background_categories must not "
                             "exceed num_categories")
        if self.days < 15:
            raise ValueError(f"LongConfig.days: expected >= 15 so that interests can recur after weeks "
                             f"(got {self.days})")
        for name in ("mean_events_per_user", "session_events", "episode_days", "dormancy_days",
                     "requests_per_event"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"LongConfig.{name}: expected a positive number (got {value!r})")
        if self.session_events < 1:
            raise ValueError("LongConfig.session_events: expected >= 1")
        if not (math.isfinite(self.events_sigma) and self.events_sigma >= 0):
            raise ValueError("LongConfig.events_sigma: expected >= 0")
        for name in ("focus_probability", "stay_probability", "like_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"LongConfig.{name}: expected a probability in [0, 1] (got {value})")
        if len(self.policy_mix) != 3:
            raise ValueError("LongConfig.policy_mix: three weights (recent, whole history, popularity)")
        probs = np.asarray(self.policy_mix, dtype=float)
        if (probs < 0).any() or abs(probs.sum() - 1) > 1e-9:
            raise ValueError(f"LongConfig.policy_mix: expected probabilities that sum to 1 (got {probs.tolist()})")
        if not (math.isfinite(self.memory_strength) and self.memory_strength >= 0):
            raise ValueError("LongConfig.memory_strength: expected >= 0")
        # The remaining shared fields (sizes, probabilities, candidates) are checked by WorldConfig.
        self.base_config()

    def base_config(self) -> WorldConfig:
        """The default world's config for the ads, advertisers, content and pages of this world."""
        try:
            return WorldConfig(
                num_users=self.num_users, days=self.days, seed=self.seed, start_timestamp=self.start_timestamp,
                num_categories=self.num_categories, num_advertisers=self.num_advertisers, num_ads=self.num_ads,
                num_contents=self.num_contents, num_pages=self.num_pages, num_topics=self.num_topics,
                like_fraction=self.like_fraction, ads_per_request=self.ads_per_request,
                placement_probs=self.placement_probs, untracked_advertiser_fraction=self.untracked_advertiser_fraction,
                evergreen_ad_fraction=self.evergreen_ad_fraction, num_candidate_requests=self.num_candidate_requests,
                candidates_per_request=self.candidates_per_request, candidate_quantile=self.candidate_quantile,
                click_bias=self.click_bias, conversion_bias=self.conversion_bias)
        except ValueError as error:
            raise ValueError(str(error).replace("WorldConfig.", "LongConfig.")) from None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LongConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LongConfig: unknown parameters {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @property
    def duration(self) -> int:
        return self.days * DAY


@dataclass
class LongWorld:
    """The latent long-history world: the default world's ads/content plus users' recurring interests.

    ``events_target [U]`` organic events wanted per user; ``interests [U, K]`` the recurring
    categories (0-based); ``episode_start, episode_end [U, K, M]`` int64 seconds from the start,
    increasing along M (episodes may begin before 0 or end after the period); ``background [U, B]``
    the other categories the user browses steadily, ``background_weight [U, B]`` their weights.
    """

    config: LongConfig
    base: World = field(init=False)
    seeds: dict = field(init=False)
    _episode_keys: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.base = World(cfg.base_config())
        root = np.random.SeedSequence([int(cfg.seed), 0x10E6F])
        latent, timeline, requests, outcomes, candidates = root.spawn(5)
        self.seeds = {"timeline": timeline, "requests": requests, "outcomes": outcomes, "candidates": candidates}
        rng = np.random.default_rng(latent)
        U, C, K, T = cfg.num_users, cfg.num_categories, cfg.recurring_interests, cfg.duration
        popularity = self.base.category_popularity

        sigma = cfg.events_sigma
        mu = math.log(cfg.mean_events_per_user) - 0.5 * sigma * sigma
        raw = np.rint(rng.lognormal(mu, sigma, U))
        self.events_target = np.clip(raw, cfg.min_events_per_user, cfg.max_events_per_user).astype(np.int64)

        # K recurring interests and B background categories per user, proportional to popularity
        # without replacement (Gumbel top-(K + B)): the first K recur, the other B are browsed
        # steadily with Dirichlet(1) weights; the user never engages with any other category.
        B = cfg.background_categories
        keys = np.log(popularity)[None, :] + rng.gumbel(size=(U, C))
        top = np.argsort(-keys, axis=1, kind="stable")[:, :K + B].astype(np.int64)
        self.interests = top[:, :K]
        self.background = top[:, K:]
        weights = rng.standard_exponential((U, B))
        self.background_weight = weights / weights.sum(axis=1, keepdims=True)

        # Alternating dormant gaps and active episodes per (user, interest), started at a random
        # phase of the first cycle so that the process is already running at t = 0.
        M = int(math.ceil(T / (0.25 * (cfg.episode_days + cfg.dormancy_days) * DAY))) + 2
        on = rng.lognormal(math.log(cfg.episode_days * DAY), 0.5, (U, K, M))
        off = rng.lognormal(math.log(cfg.dormancy_days * DAY), 0.5, (U, K, M))
        phase = rng.random((U, K)) * (on[:, :, 0] + off[:, :, 0])
        cycle_end = np.cumsum(on + off, axis=2) - phase[:, :, None]
        self.episode_end = np.rint(cycle_end).astype(np.int64)
        self.episode_start = np.rint(cycle_end - on).astype(np.int64)

        # Background draws by inverse CDF over the B categories.
        self.background_cdf = np.cumsum(self.background_weight, axis=1)
        self.background_cdf[:, -1] = 1.0

    def active_interests(self, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``[n, K]`` bool: which of each user's recurring interests is in an episode at time ``t``."""
        users = np.asarray(users, np.int64)
        t = np.asarray(t, np.int64)
        U, K, M = self.episode_start.shape
        if self._episode_keys is None:  # (row, start) keys, increasing: episodes of a row are ordered
            rows = np.repeat(np.arange(U * K, dtype=np.int64), M)
            self._episode_keys = rows * _ROW + (self.episode_start.reshape(-1) + _OFFSET)
        ends = self.episode_end.reshape(-1)
        out = np.zeros((len(users), K), dtype=bool)
        for k in range(K):
            row = users * K + k
            idx = np.searchsorted(self._episode_keys, row * _ROW + t + _OFFSET, side="right") - 1
            inside = (idx >= row * M) & (idx < (row + 1) * M)
            out[:, k] = inside & (t < ends[np.clip(idx, 0, len(ends) - 1)])
        return out

    def sample_background(self, users: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One background category per row (of the user's B) by inverse CDF of uniforms ``u`` in [0, 1)."""
        users = np.asarray(users, np.int64)
        cdf = self.background_cdf[users]  # [n, B]
        k = (cdf <= np.asarray(u, np.float64)[:, None]).sum(axis=1)
        return self.background[users, np.minimum(k, cdf.shape[1] - 1)]

    def day_of(self, t: np.ndarray) -> np.ndarray:
        return self.base.day_of(t)
