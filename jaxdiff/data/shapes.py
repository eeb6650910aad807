"""`shapes`: an embedded, procedural captioned dataset for text-to-image experiments.

Every example is one coloured shape (circle, square or triangle) in one of five regions of a grey
image, with an English caption drawn from a small grammar of paraphrases. Nothing is read from
disk: image, caption and attributes are pure functions of (seed, index), so any worker, host or
batch size sees the same example for the same index, and a result never depends on how the
indices were batched.

Attributes are integer ids `[shape, colour, position]` into `SHAPES`, `COLOURS` and `POSITIONS`.
Combinations can be held out of training (`holdout`) to measure compositional generalisation;
`jaxdiff.evaluation.shape_attributes` reads the attributes back from generated images.

Randomness is counter-based (the SplitMix64 finaliser, Steele et al. 2014, applied to
(seed, index, stream, draw)), vectorised in numpy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from jaxdiff.data.captions import words
from jaxdiff.data.indices import check_indices
from jaxdiff.errors import UserError, check_choice

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
BACKGROUNDS: tuple[str, ...] = ("plain", "textured")
CONDITIONINGS: tuple[str, ...] = ("", "mask", "edges")
"""A ControlNet's conditioning image of each example: none, the shape's filled silhouette
(white on black) or its outline."""

# RGB in [0, 255], one row per entry of COLOURS; hues 0, 120, 240, 58, 300 and 180 degrees.
PALETTE: np.ndarray = np.array(
    [
        [225, 45, 45],
        [40, 200, 40],
        [60, 60, 235],
        [230, 225, 40],
        [215, 50, 215],
        [40, 215, 215],
    ],
    dtype=np.float32,
)  # [6, 3]

# Region centres (x, y) in units of the image side, y pointing down; one row per POSITIONS entry.
ANCHORS: np.ndarray = np.array(
    [[0.27, 0.27], [0.73, 0.27], [0.27, 0.73], [0.73, 0.73], [0.5, 0.5]], dtype=np.float32
)  # [5, 2]

# Shape geometry, in units of the shape's radius r (half its bounding-box size): the square's
# half side, and the height of the upward equilateral triangle (bounding box centred on the anchor).
SQUARE_HALF_SIDE = 0.9
TRIANGLE_HEIGHT = 1.9
# Spread E|p - centroid|^2 (both axes) of each shape in SHAPES order, divided by r**2: a disc
# 1/2; a square of half side h 2h^2/3; an equilateral triangle of height H H^2/9.
SHAPE_SPREADS: np.ndarray = np.array(
    [0.5, 2.0 * SQUARE_HALF_SIDE**2 / 3.0, TRIANGLE_HEIGHT**2 / 9.0], dtype=np.float32
)  # [3]

_RADIUS_RANGE = (0.13, 0.18)
_POSITION_JITTER = 0.03
_BRIGHTNESS_RANGE = (0.85, 1.1)
_CHANNEL_JITTER = 12.0
_PLAIN_GREY = (40.0, 130.0)
_TEXTURED_GREY = (55.0, 115.0)
_WAVE_AMPLITUDE = (4.0, 10.0)
_WAVE_CYCLES = (1.0, 3.0)
_GRAIN_AMPLITUDE = 5.0

# Random streams: each kind of draw has its own, so adding draws to one never changes another.
_ATTRIBUTE_STREAM, _GEOMETRY_STREAM, _CAPTION_STREAM, _GRAIN_STREAM = 1, 2, 3, 4

# Caption grammar. "{p}" is a position phrase, "{c}" a colour and "{s}" a shape.
_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} in the {p}",
    "{c} {s} in the {p}",
    "there is a {c} {s} in the {p}",
    "{p}: {c} {s}",
    "{p}: a {c} {s}",
    "{c} {s}, {p}",
    "a {s} in the {p}, coloured {c}",
)
STREAM_LENGTH = 2**62  # examples are a function of the index, which may grow without bound

_VERTICAL_SYNONYMS = {"top": "upper", "bottom": "lower"}
_CENTER_PHRASES: tuple[str, ...] = ("center", "centre", "middle")

_VERTICAL_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_HORIZONTAL_WORDS = ("left", "right")


def _position_phrases(position: str) -> tuple[str, ...]:
    """Every phrase the grammar uses for a region; the first is the canonical one."""
    if position == "center":
        return _CENTER_PHRASES
    vertical, horizontal = position.split()
    alternative = _VERTICAL_SYNONYMS[vertical]
    return (
        f"{vertical} {horizontal} corner",
        f"{vertical} {horizontal}",
        f"{vertical}-{horizontal}",
        f"{vertical}-{horizontal} corner",
        f"{alternative} {horizontal}",
        f"{alternative} {horizontal} corner",
    )


def prompt(shape: str, colour: str, position: str) -> str:
    """The canonical prompt for one combination, e.g. "a red circle in the top left corner"."""
    _check_combination((shape, colour, position))
    return _TEMPLATES[0].format(c=colour, s=shape, p=_position_phrases(position)[0])


def combinations() -> list[tuple[str, str, str]]:
    """All 90 (shape, colour, position) combinations, in attribute-id order."""
    return [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]


@functools.cache
def _grammar_tokens() -> frozenset[str]:
    """Every token the caption grammar can produce."""
    tokens: set[str] = set()
    for template in _TEMPLATES:
        for position in POSITIONS:
            for phrase in _position_phrases(position):
                tokens.update(words(template.format(c=COLOURS[0], s=SHAPES[0], p=phrase)))
    tokens.update(SHAPES)
    tokens.update(COLOURS)
    return frozenset(tokens)


def vocabulary() -> list[str]:
    """Every token the caption grammar can produce (words and punctuation), sorted."""
    return sorted(_grammar_tokens())


def word_groups() -> dict[str, list[str]]:
    """The vocabulary's words by kind: shapes, colours and the words of the positions."""
    positions = {
        word
        for position in POSITIONS
        for phrase in _position_phrases(position)
        for word in words(phrase)
        if word.isalnum()
    }
    return {"shapes": list(SHAPES), "colours": list(COLOURS), "positions": sorted(positions)}


def caption_attributes(caption: str) -> tuple[int, int, int]:
    """Reads (shape, colour, position) ids from a caption or a short description.

    Accepts any wording built from the grammar's vocabulary that names exactly one shape, one
    colour and one region, e.g. "red circle, upper left" or "green triangle top right".
    """
    tokens = words(caption)
    unknown = [w for w in tokens if w not in _grammar_tokens()]
    if unknown:
        raise UserError(
            f"unknown word {unknown[0]!r} in {caption!r}; accepted: {', '.join(vocabulary())}"
        )
    shapes = {w for w in tokens if w in SHAPES}
    colours = {w for w in tokens if w in COLOURS}
    verticals = {_VERTICAL_WORDS[w] for w in tokens if w in _VERTICAL_WORDS}
    horizontals = {w for w in tokens if w in _HORIZONTAL_WORDS}
    centers = {w for w in tokens if w in _CENTER_PHRASES}
    if len(shapes) != 1:
        raise UserError(f"{caption!r} must name exactly one shape out of {', '.join(SHAPES)}")
    if len(colours) != 1:
        raise UserError(f"{caption!r} must name exactly one colour out of {', '.join(COLOURS)}")
    if len(verticals) == 1 and len(horizontals) == 1 and not centers:
        position = f"{verticals.pop()} {horizontals.pop()}"
    elif centers and not verticals and not horizontals:
        position = "center"
    else:
        raise UserError(
            f"{caption!r} must name exactly one region: top/upper or bottom/lower with left or "
            f"right, or center/centre/middle"
        )
    return SHAPES.index(shapes.pop()), COLOURS.index(colours.pop()), POSITIONS.index(position)


def parse_holdout(spec: str) -> tuple[tuple[str, str, str], ...]:
    """Parses a config string such as "green triangle top right; blue circle center".

    Entries are separated by ";", each naming one colour, one shape and one region in any order
    (see `caption_attributes`). Returns (shape, colour, position) name triples without
    duplicates, as `ShapesDataset.holdout` takes them; an empty string gives no holdout.
    """
    holdout: list[tuple[str, str, str]] = []
    for entry in spec.split(";"):
        if not entry.strip():
            continue
        shape, colour, position = caption_attributes(entry)
        names = (SHAPES[shape], COLOURS[colour], POSITIONS[position])
        if names not in holdout:
            holdout.append(names)
    return tuple(holdout)


def _check_combination(combination: Sequence[str]) -> None:
    """Raises UserError unless `combination` is a known (shape, colour, position) triple."""
    if len(combination) != 3:
        raise UserError(
            f"combination {combination!r} must be a (shape, colour, position) triple of names"
        )
    for value, names, what in zip(
        combination, (SHAPES, COLOURS, POSITIONS), ("shape", "colour", "position"), strict=True
    ):
        if value not in names:
            raise UserError(
                f"{what} {value!r} in {tuple(combination)!r} is not one of {', '.join(names)}"
            )


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche hash of uint64 values."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _bits(keys: np.ndarray, stream: int, count: int) -> np.ndarray:
    """`count` random uint64 words per key for one stream: `[N, count]`."""
    draws = _mix(np.arange(count, dtype=np.uint64) + np.uint64(stream << 32))  # [count]
    return _mix(keys[:, None] ^ draws[None, :])  # [N, count]


def _uniform(keys: np.ndarray, stream: int, count: int) -> np.ndarray:
    """`count` uniform float32 draws in [0, 1) per key for one stream: `[N, count]`."""
    return ((_bits(keys, stream, count) >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)


def shape_coverage(
    shape: np.ndarray, center: np.ndarray, radius: np.ndarray, image_size: int
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape per image: `[N, S, S]` float32.

    `shape` `[N]` holds ids into SHAPES, `center` `[N, 2]` the bounding-box centre (x, y) and
    `radius` `[N]` half the bounding-box size, both in units of the image side. Coverage is a
    one-pixel linear ramp of the signed distance to the outline (exact for the circle and the
    square; the maximum of the edge-line distances for the triangle).
    """
    size = np.float32(image_size)
    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / size  # [S]
    coverage = np.empty((len(shape), image_size, image_size), dtype=np.float32)
    for kind in range(len(SHAPES)):
        rows = np.flatnonzero(shape == kind)
        if rows.size == 0:
            continue
        r = radius[rows, None, None].astype(np.float32)  # [n, 1, 1]
        dx = grid[None, None, :] - center[rows, 0, None, None]  # [n, 1, S]
        dy = grid[None, :, None] - center[rows, 1, None, None]  # [n, S, 1]
        if kind == 0:
            distance = np.sqrt(dx * dx + dy * dy) - r  # [n, S, S]
        elif kind == 1:
            qx = np.abs(dx) - SQUARE_HALF_SIDE * r  # [n, 1, S]
            qy = np.abs(dy) - SQUARE_HALF_SIDE * r  # [n, S, 1]
            outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))  # [n, S, S]
            distance = outside + np.minimum(np.maximum(qx, qy), 0.0)
        else:
            half_height = 0.5 * TRIANGLE_HEIGHT * r  # [n, 1, 1]
            base = dy - half_height  # [n, S, 1]
            # Outward normals of the slanted edges are (+-cos 30, -sin 30); both meet at the apex.
            side = np.float32(np.sqrt(3.0) / 2.0) * np.abs(dx) - 0.5 * (dy + half_height)
            distance = np.maximum(base, side)  # [n, S, S]
        coverage[rows] = np.clip(0.5 - distance * size, 0.0, 1.0)
    return coverage


@dataclasses.dataclass(frozen=True)
class ShapesDataset:
    """The procedural `shapes` dataset: one coloured shape per image, captioned.

    Attributes:
      image_size: image side in pixels, at least 16.
      seed: non-negative integer; with the index it determines every example.
      holdout: (shape, colour, position) name triples that never appear (see `parse_holdout`).
      background: "plain" (a flat dark-to-mid grey) or "textured" (grey with a light,
        low-contrast pattern of waves and grain).
      conditioning: "" (none), "mask" or "edges": each record's `conditioning_image`, the
        shape's silhouette or outline in its place (`CONDITIONINGS`).
    """

    image_size: int = 32
    seed: int = 0
    holdout: tuple[tuple[str, str, str], ...] = ()
    background: str = "textured"
    conditioning: str = ""
    name: ClassVar[str] = "data set 'shapes'"
    class_names: ClassVar[None] = None  # captions are compositions, not classes

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise UserError(f"image_size {self.image_size!r} must be an integer of at least 16")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UserError(f"seed {self.seed!r} must be an integer in [0, 2**63)")
        check_choice("background", self.background, BACKGROUNDS)
        if self.conditioning not in CONDITIONINGS:
            raise UserError(
                f"data.conditioning={self.conditioning!r} is not supported; accepted: "
                "'' (none), mask, edges"
            )
        for combination in self.holdout:
            _check_combination(combination)
        object.__setattr__(self, "holdout", tuple(tuple(c) for c in self.holdout))
        if not self._allowed().size:
            raise UserError(
                f"holdout removes all {len(combinations())} combinations; keep at least one"
            )

    def _allowed(self) -> np.ndarray:
        """Attribute ids of the combinations not held out: `[M, 3]` int32."""
        held = set(self.holdout)
        rows = [
            (SHAPES.index(s), COLOURS.index(c), POSITIONS.index(p))
            for s, c, p in combinations()
            if (s, c, p) not in held
        ]
        return np.array(rows, dtype=np.int32).reshape(-1, 3)

    def _keys(self, indices: np.ndarray) -> np.ndarray:
        """One uint64 key per example from (seed, index): `[N]`."""
        array = check_indices(indices, "index")
        seed_key = _mix(np.array([self.seed], dtype=np.uint64))  # [1]
        return _mix(seed_key ^ _mix(array.astype(np.uint64)))  # [N]

    def _attributes(self, keys: np.ndarray) -> np.ndarray:
        """Uniform over the allowed combinations: `[N, 3]` int32."""
        allowed = self._allowed()  # [M, 3]
        choice = _bits(keys, _ATTRIBUTE_STREAM, 1)[:, 0] % np.uint64(len(allowed))  # [N]
        return allowed[choice.astype(np.int64)]

    def attributes(self, indices: np.ndarray) -> np.ndarray:
        """(shape, colour, position) ids of each example: `[N, 3]` int32."""
        return self._attributes(self._keys(indices))

    def _coverage(self, u: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """The fraction of each pixel the shape covers, from the geometry draws `u` `[N, 14]`:
        `[N, S, S]`."""
        center = ANCHORS[attributes[:, 2]] + _POSITION_JITTER * (2.0 * u[:, 0:2] - 1.0)  # [N, 2]
        radius = _RADIUS_RANGE[0] + (_RADIUS_RANGE[1] - _RADIUS_RANGE[0]) * u[:, 2]  # [N]
        return shape_coverage(attributes[:, 0], center, radius, self.image_size)

    def _conditioning_images(self, keys: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """The examples' conditioning images (`conditioning`): `[N, S, S, 3]` uint8."""
        alpha = self._coverage(_uniform(keys, _GEOMETRY_STREAM, 14), attributes)  # [N, S, S]
        if self.conditioning == "edges":  # covered pixels next to an uncovered one
            padded = np.pad(alpha, ((0, 0), (1, 1), (1, 1)), constant_values=0.0)
            size = self.image_size
            inner = np.min(
                [padded[:, i : i + size, j : j + size] for i in range(3) for j in range(3)], axis=0
            )
            alpha = alpha - inner
        value = np.rint(255.0 * np.clip(alpha, 0.0, 1.0)).astype(np.uint8)
        return np.repeat(value[..., None], 3, axis=-1)

    def conditioning_images(
        self, indices: np.ndarray, attributes: np.ndarray | None = None
    ) -> np.ndarray:
        """The conditioning images (`conditioning`) of the examples at `indices`: `[N, S, S, 3]`
        uint8; with `attributes` `[N, 3]`, those of the same examples (size, jitter) with these
        attributes instead of their own (a mask that disagrees with the caption)."""
        if not self.conditioning:
            raise UserError("data.conditioning is ''; accepted: mask, edges")
        keys = self._keys(indices)
        if attributes is None:
            return self._conditioning_images(keys, self._attributes(keys))
        attributes = np.asarray(attributes)
        sizes = np.array([len(SHAPES), len(COLOURS), len(POSITIONS)])
        if (
            attributes.shape != (len(keys), 3)
            or not ((attributes >= 0) & (attributes < sizes)).all()
        ):
            raise UserError(
                f"attributes of shape {attributes.shape}; accepted: [{len(keys)}, 3] (shape, "
                "colour, position) ids, one row per index"
            )
        return self._conditioning_images(keys, attributes)

    def _images(self, keys: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """Renders the examples: `[N, S, S, 3]` uint8."""
        n, size = len(keys), self.image_size
        u = _uniform(keys, _GEOMETRY_STREAM, 14)  # [N, 14]
        alpha = self._coverage(u, attributes)  # [N, S, S]

        brightness = _BRIGHTNESS_RANGE[0] + (_BRIGHTNESS_RANGE[1] - _BRIGHTNESS_RANGE[0]) * u[:, 3]
        colour = PALETTE[attributes[:, 1]] * brightness[:, None]  # [N, 3]
        colour = np.clip(colour + _CHANNEL_JITTER * (2.0 * u[:, 4:7] - 1.0), 0.0, 255.0)

        if self.background == "plain":
            grey = _PLAIN_GREY[0] + (_PLAIN_GREY[1] - _PLAIN_GREY[0]) * u[:, 7]  # [N]
            background = np.broadcast_to(grey[:, None, None], (n, size, size))  # [N, S, S]
        else:
            background = self._texture(keys, u[:, 7:14])

        alpha = alpha[..., None]  # [N, S, S, 1]
        image = background[..., None] * (1.0 - alpha) + colour[:, None, None, :] * alpha
        return np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)  # [N, S, S, 3]

    def _texture(self, keys: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Grey background with two faint plane waves and fine grain: `[N, S, S]` float32.

        `u` `[N, 7]` holds uniform draws for the base grey, the two wave amplitudes, the two wave
        directions, the phase and the frequency of the first wave (the second is one cycle faster).
        """
        n, size = len(keys), self.image_size
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # [S]
        grey = _TEXTURED_GREY[0] + (_TEXTURED_GREY[1] - _TEXTURED_GREY[0]) * u[:, 0]  # [N]
        texture = np.broadcast_to(grey[:, None, None], (n, size, size)).copy()  # [N, S, S]
        cycles = _WAVE_CYCLES[0] + (_WAVE_CYCLES[1] - _WAVE_CYCLES[0]) * u[:, 6]  # [N]
        for wave in range(2):
            amplitude = (
                _WAVE_AMPLITUDE[0] + (_WAVE_AMPLITUDE[1] - _WAVE_AMPLITUDE[0]) * u[:, 1 + wave]
            )
            angle = np.pi * u[:, 3 + wave]  # [N]
            frequency = 2.0 * np.pi * (cycles + wave)  # [N] radians per image side
            fx = (frequency * np.cos(angle))[:, None, None]  # [N, 1, 1]
            fy = (frequency * np.sin(angle))[:, None, None]
            phase = (2.0 * np.pi * (u[:, 5] + 0.5 * wave))[:, None, None]
            texture += amplitude[:, None, None] * np.cos(
                fx * grid[None, None, :] + fy * grid[None, :, None] + phase
            )
        pixels = np.arange(size * size, dtype=np.uint64).reshape(size, size)  # [S, S]
        grain = _mix(keys[:, None, None] ^ _mix(pixels + np.uint64(_GRAIN_STREAM << 32)))
        grain = (grain >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)  # [N, S, S]
        return texture + _GRAIN_AMPLITUDE * (2.0 * grain - 1.0)

    def images(self, indices: np.ndarray) -> np.ndarray:
        """The examples' images: `[N, S, S, 3]` uint8."""
        keys = self._keys(indices)
        return self._images(keys, self._attributes(keys))

    def _captions(self, keys: np.ndarray, attributes: np.ndarray) -> list[str]:
        """One paraphrase per example, chosen by (seed, index)."""
        bits = _bits(keys, _CAPTION_STREAM, 2)  # [N, 2]
        template = (bits[:, 0] % np.uint64(len(_TEMPLATES))).astype(np.int64)  # [N]
        captions = []
        for (shape, colour, position), t, b in zip(
            attributes.tolist(), template.tolist(), bits[:, 1].tolist(), strict=True
        ):
            phrases = _position_phrases(POSITIONS[position])
            captions.append(
                _TEMPLATES[t].format(
                    c=COLOURS[colour], s=SHAPES[shape], p=phrases[b % len(phrases)]
                )
            )
        return captions

    def captions(self, indices: np.ndarray) -> list[str]:
        """The examples' captions, e.g. "top-left: red circle"."""
        keys = self._keys(indices)
        return self._captions(keys, self._attributes(keys))

    def __len__(self) -> int:
        """Indices are unbounded; this is the length a record source must report."""
        return STREAM_LENGTH

    def __getitem__(self, index: int) -> dict[str, np.ndarray | str]:
        """The record `jaxdiff.data.pipeline` reads: `image` uint8 `[S, S, 3]`, `caption`,
        `attributes` `[3]` and, with `conditioning`, `conditioning_image` uint8 `[S, S, 3]`."""
        keys = self._keys(np.array([index]))
        attributes = self._attributes(keys)
        record = {
            "image": self._images(keys, attributes)[0],
            "caption": self._captions(keys, attributes)[0],
            "attributes": attributes[0],
        }
        if self.conditioning:
            record["conditioning_image"] = self._conditioning_images(keys, attributes)[0]
        return record

    def image_shape(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def vocabulary(self) -> list[str]:
        return vocabulary()

    def word_groups(self) -> dict[str, list[str]]:
        return word_groups()

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray | list[str]]:
        """A training batch.

        Returns `image` float32 in [-1, 1] `[N, S, S, 3]`, `caption` (N strings),
        `attributes` int32 `[N, 3]` and, with `conditioning`, `conditioning_image` float32 in
        [0, 1] `[N, S, S, 3]`.
        """
        keys = self._keys(indices)
        attributes = self._attributes(keys)
        image = self._images(keys, attributes).astype(np.float32) / 127.5 - 1.0
        batch = {
            "image": image,
            "caption": self._captions(keys, attributes),
            "attributes": attributes,
        }
        if self.conditioning:
            pictures = self._conditioning_images(keys, attributes)
            batch["conditioning_image"] = pictures.astype(np.float32) / 255.0
        return batch
