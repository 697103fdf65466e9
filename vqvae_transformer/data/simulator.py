"""Physics-based simulator of radar micro-Doppler spectrograms of people walking towards a radar.

The body follows the Boulic–Thalmann global human walking model (as used in V.C. Chen, *The
Micro-Doppler Effect in Radar*): periodic joint-angle curves over the normalised gait phase, forward
kinematics of the joint chains, and a forward progression of ``RLc·Ht`` metres per cycle. Sixteen body
segments are ellipsoids whose radar cross-section depends on the aspect angle; the slow-time return
is the coherent sum of ``√σ·exp(−j·4πR/λ)`` over segments, and the image is the dB short-time Fourier
transform (Doppler vertical, approaching = positive = up, time horizontal).

Identities come from per-person traits drawn once from a seed (:func:`draw_persons`); every recording
adds nuisances (start phase, ±5 % speed, aspect angle, range, noise) from the caller's generator.
See ``docs/microdoppler_model.md`` for the facts this rests on.

Coordinates: x forward (walking direction, towards the radar), y to the person's left, z up; metres,
seconds, degrees in the gait tables, radians inside the kinematics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.interpolate import PchipInterpolator
import scipy.signal

logger = logging.getLogger(__name__)

SPEED_OF_LIGHT = 299_792_458.0  # m/s

# Boulic–Thalmann segment lengths as fractions of the body height H.
SEGMENT_RATIOS: dict[str, float] = {
    "head": 0.130,
    "half_shoulder": 0.1295,
    "torso": 0.288,
    "half_hip": 0.0955,
    "upper_leg": 0.245,
    "lower_leg": 0.246,
    "foot": 0.143,
    "upper_arm": 0.188,
    "lower_arm": 0.152,
}
SEGMENT_NAMES: tuple[str, ...] = tuple(SEGMENT_RATIOS)

# The 16 scatterers: (name, kind in SEGMENT_RATIOS, ellipsoid semi-axis a = b in metres).
SCATTERERS: tuple[tuple[str, str, float], ...] = (
    ("head", "head", 0.10),
    ("torso", "torso", 0.15),
    ("shoulder_r", "half_shoulder", 0.06),
    ("shoulder_l", "half_shoulder", 0.06),
    ("upper_arm_r", "upper_arm", 0.06),
    ("upper_arm_l", "upper_arm", 0.06),
    ("forearm_r", "lower_arm", 0.05),
    ("forearm_l", "lower_arm", 0.05),
    ("hip_r", "half_hip", 0.07),
    ("hip_l", "half_hip", 0.07),
    ("upper_leg_r", "upper_leg", 0.07),
    ("upper_leg_l", "upper_leg", 0.07),
    ("lower_leg_r", "lower_leg", 0.06),
    ("lower_leg_l", "lower_leg", 0.06),
    ("foot_r", "foot", 0.05),
    ("foot_l", "foot", 0.05),
)


# --------------------------------------------------------------------------------------------------
# Configuration and traits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonTraits:
    """Fixed traits of one simulated person (drawn once per person by :func:`draw_persons`).

    Attributes:
        user_id: public 1-based id (folder ``ID_<user_id>``).
        height: body height H in metres.
        speed: preferred walking speed in m/s.
        cadence: cadence factor; the gait cycle lasts ``Dc(RV) / cadence`` seconds.
        arm_swing: gain on the oscillating part of the shoulder and elbow curves.
        knee_peak: peak knee flexion in swing, degrees (ordinary regime; shifted by −5·s above RV 1.3).
        hip_peak: peak hip flexion, degrees (shifted by +5·s above RV 1.3).
        segment_scale: multiplicative jitter (≈ ±5 %) on the nine segment ratios, in SEGMENT_NAMES order.
        left_leg_gain: left hip-swing amplitude relative to the right leg (left/right asymmetry).
        left_arm_gain: left arm-swing amplitude relative to the right arm.
        left_phase: phase offset of the left limbs in cycles (0.5 = perfectly symmetric gait).
        torso_rcs: scale on the torso radar cross-section (build, clothing).
        limb_rcs: scale on the arm, leg and foot radar cross-sections; below 1 because a clothed limb is a
            less perfect specular reflector than the ellipsoid's broadside highlight π·c² suggests.
        torso_lean: constant forward lean of the upper body, degrees.
    """

    user_id: int
    height: float
    speed: float
    cadence: float
    arm_swing: float
    knee_peak: float
    hip_peak: float
    segment_scale: tuple[float, ...]
    left_leg_gain: float
    left_arm_gain: float
    left_phase: float
    torso_rcs: float
    limb_rcs: float
    torso_lean: float

    def to_dict(self) -> dict:
        """Return the traits as a JSON-serialisable dict (segment_scale keyed by segment name)."""
        out = dataclasses.asdict(self)
        out["segment_scale"] = {name: float(v) for name, v in zip(SEGMENT_NAMES, self.segment_scale)}
        return out

    @property
    def leg_length(self) -> float:
        """Ht: thigh + shank length in metres (0.491·H before jitter)."""
        return self.height * (
            SEGMENT_RATIOS["upper_leg"] * self.segment_scale[SEGMENT_NAMES.index("upper_leg")]
            + SEGMENT_RATIOS["lower_leg"] * self.segment_scale[SEGMENT_NAMES.index("lower_leg")]
        )


@dataclass
class RadarConfig:
    """Radar, processing and per-recording nuisance settings.

    Attributes:
        carrier_hz: carrier frequency (24 GHz: λ = 0.0125 m).
        prf: pulse repetition frequency in Hz; must be ≥ 4·v_max/λ (checked against the feet).
        duration_s: recording length in seconds.
        window: STFT window length in samples (Hann); 128 at 2.56 kHz = 50 ms.
        overlap: STFT window overlap fraction in [0, 1).
        nfft: FFT length (zero padding), also the number of Doppler bins.
        dynamic_range_db: the image keeps the top ``dynamic_range_db`` dB below the maximum.
        range_falloff: scale each scatterer's amplitude by 1/R².
        radar_height_m: antenna height above the ground.
        snr_db: (low, high) per-recording signal-to-noise ratio range in dB.
        aspect_deg_max: walking direction deviates up to this angle from the line of sight.
        range_m: (low, high) distance to the radar at mid-recording, metres.
        speed_jitter: per-recording relative speed variation (0.05 = ±5 %).
        cadence_jitter: per-recording relative cadence variation (0.03 = ±3 %).
        rcs_jitter_db: per-recording, per-limb-segment RCS variation (standard deviation, dB): clothing, posture.
        torso_rcs_jitter_db: the same for head, torso, shoulders and hips (a large, steadier target).
        kinematics_decimation: pulses per kinematic sample (ranges are interpolated in between).
    """

    carrier_hz: float = 24e9
    prf: float = 2560.0
    duration_s: float = 3.0
    window: int = 128
    overlap: float = 0.875
    nfft: int = 256
    dynamic_range_db: float = 45.0
    range_falloff: bool = True
    radar_height_m: float = 1.0
    snr_db: tuple[float, float] = (15.0, 30.0)
    aspect_deg_max: float = 7.0
    range_m: tuple[float, float] = (9.0, 16.0)
    speed_jitter: float = 0.05
    cadence_jitter: float = 0.03
    rcs_jitter_db: float = 3.0
    torso_rcs_jitter_db: float = 1.0
    kinematics_decimation: int = 4

    @property
    def wavelength(self) -> float:
        """λ in metres."""
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def hop(self) -> int:
        """STFT hop in samples."""
        return max(1, int(round(self.window * (1.0 - self.overlap))))

    def validate(self) -> None:
        """Raise ValueError naming the offending value when the settings cannot work."""
        if self.carrier_hz <= 0 or self.prf <= 0 or self.duration_s <= 0:
            raise ValueError(
                f"carrier_hz, prf and duration_s must be positive, got {self.carrier_hz}, {self.prf}, {self.duration_s}"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")
        if self.window < 8 or self.nfft < self.window:
            raise ValueError(f"need window ≥ 8 and nfft ≥ window, got window={self.window}, nfft={self.nfft}")
        if self.duration_s * self.prf < 2 * self.window:
            raise ValueError(
                f"duration_s={self.duration_s} at prf={self.prf} gives fewer than two windows of {self.window} samples"
            )
        if self.kinematics_decimation < 1:
            raise ValueError(f"kinematics_decimation must be ≥ 1, got {self.kinematics_decimation}")
        if self.dynamic_range_db <= 0:
            raise ValueError(f"dynamic_range_db must be positive, got {self.dynamic_range_db}")

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Spectrogram:
    """One simulated recording as a dB spectrogram plus the physical facts behind it.

    Attributes:
        db: [doppler_bins, time_frames] power in dB, max 0, clipped at −dynamic_range_db; row 0 is the
            highest positive Doppler (approaching), the last row the most negative.
        doppler_hz: [doppler_bins] Doppler frequency of each row (descending).
        time_s: [time_frames] centre time of each frame.
        speed: actual walking speed of this recording, m/s.
        cycle_duration_s: actual gait cycle duration (one left + one right step), seconds.
        aspect_deg: angle between walking direction and line of sight at mid-recording.
        range_m: distance to the radar at mid-recording.
        snr_db: signal-to-noise ratio of the raw slow-time signal.
        start_phase: gait phase (cycles) at t = 0.
        wavelength: radar wavelength in metres.
        dynamic_range_db: the clip level below the maximum (the image's black).
        extras: further facts (``rv``: relative velocity V/Ht; ``cadence``: this recording's cadence factor).
    """

    db: np.ndarray
    doppler_hz: np.ndarray
    time_s: np.ndarray
    speed: float
    cycle_duration_s: float
    aspect_deg: float
    range_m: float
    snr_db: float
    start_phase: float
    wavelength: float
    dynamic_range_db: float = 45.0
    extras: dict = field(default_factory=dict)

    @property
    def torso_doppler_hz(self) -> float:
        """Nominal torso Doppler 2V/λ of this recording (head-on; the aspect lowers it by cos θ)."""
        return 2.0 * self.speed / self.wavelength


# --------------------------------------------------------------------------------------------------
# Persons
# --------------------------------------------------------------------------------------------------


def _person_rng(seed: int, user_id: int) -> np.random.Generator:
    """Generator for one person's traits, independent of how many persons are drawn."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED, int(user_id)]))


def draw_persons(num_users: int, seed: int = 0) -> list[PersonTraits]:
    """Draw the fixed traits of ``num_users`` persons, deterministically from ``seed``.

    Person k's traits depend only on (seed, k): drawing 5 persons gives the first 5 of drawing 31.

    Args:
        num_users: number of persons (ids 1..num_users).
        seed: base seed.

    Returns:
        A list of :class:`PersonTraits`, ordered by user id.
    """
    if num_users < 1:
        raise ValueError(f"num_users must be a positive integer, got {num_users}")
    return [_draw_person(user_id, seed) for user_id in range(1, num_users + 1)]


def _draw_person(user_id: int, seed: int) -> PersonTraits:
    """Draw one person's traits from its own generator."""
    rng = _person_rng(seed, user_id)
    u = rng.uniform
    return PersonTraits(
        user_id=user_id,
        height=float(u(1.55, 1.95)),
        speed=float(u(0.9, 1.6)),
        cadence=float(u(0.9, 1.1)),
        arm_swing=float(u(0.5, 1.5)),
        knee_peak=float(u(60.0, 75.0)),
        hip_peak=float(u(21.0, 29.0)),
        segment_scale=tuple(float(v) for v in u(0.95, 1.05, size=len(SEGMENT_NAMES))),
        left_leg_gain=float(u(0.92, 1.08)),
        left_arm_gain=float(u(0.8, 1.2)),
        left_phase=float(0.5 + u(-0.02, 0.02)),
        torso_rcs=float(np.exp(u(np.log(0.6), np.log(1.6)))),
        limb_rcs=float(np.exp(u(np.log(0.45), np.log(0.9)))),
        torso_lean=float(u(0.0, 8.0)),
    )


# --------------------------------------------------------------------------------------------------
# Gait kinematics (Boulic–Thalmann)
# --------------------------------------------------------------------------------------------------


def _periodic_pchip(points: list[tuple[float, float]]) -> PchipInterpolator:
    """Shape-preserving spline through (phase, value) control points, periodic with period 1.

    The points are wrapped into [0, 1), de-duplicated and tiled over three periods so that the curve
    is smooth across the cycle boundary; evaluate it at ``phase % 1``.
    """
    wrapped: dict[float, float] = {}
    for phase, value in points:
        wrapped[round(phase % 1.0, 9)] = value
    xs = np.array(sorted(wrapped))
    ys = np.array([wrapped[x] for x in xs])
    return PchipInterpolator(np.concatenate([xs - 1, xs, xs + 1]), np.tile(ys, 3))


@dataclass
class _GaitCurves:
    """Joint-angle curves of one recording (degrees as functions of the phase in cycles)."""

    hip: PchipInterpolator
    knee: PchipInterpolator
    ankle: PchipInterpolator
    elbow: PchipInterpolator
    thorax: PchipInterpolator
    rv: float
    support_fraction: float  # Ds / Dc


def gait_timing(rv: float) -> tuple[float, float, float]:
    """Boulic–Thalmann timing for a relative velocity RV = V / Ht.

    Args:
        rv: relative velocity (0 < RV ≤ 3).

    Returns:
        (RLc, Dc, Ds): relative cycle length, cycle duration (s), support duration (s).
    """
    if not 0.0 < rv <= 3.0:
        raise ValueError(f"relative velocity RV must lie in (0, 3], got {rv:.3f}")
    rlc = 1.346 * math.sqrt(rv)
    dc = rlc / rv
    ds = 0.752 * dc - 0.143
    return rlc, dc, ds


def _gait_curves(person: PersonTraits, rv: float) -> _GaitCurves:
    """Build the PCHIP joint curves for one person at relative velocity ``rv``."""
    _, dc, ds = gait_timing(rv)
    s = min(max((rv - 1.3) / 1.7, 0.0), 1.0)  # fast-walk shift of the control points
    k = min(max((rv - 0.5) / 0.8, 0.0), 1.5)  # elbow coefficient, clipped for fast walkers
    ds_frac = ds / dc
    hip_peak = person.hip_peak + 5.0 * s
    knee_peak = person.knee_peak - 5.0 * s
    return _GaitCurves(
        hip=_periodic_pchip([(-0.1, hip_peak), (0.5, -15.0), (0.9, hip_peak)]),
        knee=_periodic_pchip([(0.17, 3.0), (0.4, 3.0), (0.75, knee_peak), (1.0, 3.0)]),
        ankle=_periodic_pchip([(0.0, -3.0), (0.08, -18.0), (0.5, 8.0), (ds_frac, -20.0), (0.85, -3.0)]),
        elbow=_periodic_pchip([(0.05, 6 + 8 * k), (0.5 + 0.01 * k, 20 + 24 * k), (0.9, 8 + 9 * k)]),
        thorax=_periodic_pchip([(0.1, 4 * rv / 3), (0.4, -1.5 * rv), (0.6, -4 * rv / 3), (0.9, 1.5 * rv)]),
        rv=rv,
        support_fraction=ds_frac,
    )


def _sagittal(angle: np.ndarray) -> np.ndarray:
    """Unit vector pointing down, swung forward by ``angle`` (rad) in the x–z plane: [..., 3]."""
    return np.stack([np.sin(angle), np.zeros_like(angle), -np.cos(angle)], axis=-1)


def _yaw(vec: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate [..., 3] vectors about the vertical axis by ``angle`` (rad, broadcast over [...])."""
    c, s = np.cos(angle), np.sin(angle)
    x, y, z = vec[..., 0], vec[..., 1], vec[..., 2]
    return np.stack([c * x - s * y, s * x + c * y, np.broadcast_to(z, x.shape)], axis=-1)


def _swing(curve: np.ndarray, gain: float) -> np.ndarray:
    """Scale the oscillation of a periodic curve about its mean by ``gain``."""
    mean = curve.mean()
    return mean + gain * (curve - mean)


def body_segments(
    person: PersonTraits, phase: np.ndarray, progression: np.ndarray, rv: float, cadence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward kinematics of the 16 scatterers over time.

    Args:
        person: the person's traits.
        phase: [T] gait phase in cycles (right heel strike at integer values).
        progression: [T] forward position of the pelvis (m) along x.
        rv: relative velocity used for the gait curves.
        cadence: cadence factor (the hip swing is scaled by 1/cadence so the stride still matches speed).

    Returns:
        (centres, axes, lengths): [T, 16, 3] segment centres (m), [T, 16, 3] unit segment axes, and
        [16] segment lengths (m), in SCATTERERS order.
    """
    h = person.height
    length = {name: h * SEGMENT_RATIOS[name] * person.segment_scale[i] for i, name in enumerate(SEGMENT_NAMES)}
    ht = length["upper_leg"] + length["lower_leg"]
    curves = _gait_curves(person, rv)
    _, dc, ds = gait_timing(rv)
    two_pi = 2.0 * np.pi
    deg = np.pi / 180.0
    t = np.mod(phase, 1.0)  # [T]
    zeros = np.zeros_like(t)

    # Pelvis translations (in units of Ht) and rotations (degrees).
    vertical = (-0.015 * rv + 0.015 * rv * np.sin(two_pi * (2 * t - 0.35))) * ht
    lateral = -0.032 * np.sin(two_pi * (t - 0.1)) * ht
    fore_aft = -0.021 * np.sin(two_pi * (2 * t + 2 * (0.625 - ds / dc))) * ht
    pelvis_list = 1.66 * rv * np.cos(two_pi * (t - 0.1)) * deg  # roll, smooth stand-in for the piecewise cosine
    pelvis_pitch = (-2.0 + 2.0 * np.sin(two_pi * (2 * t - 0.1))) * deg
    pelvis_yaw = -4.0 * rv * np.cos(two_pi * t) * deg
    pelvis = np.stack([progression + fore_aft, lateral, ht + vertical], axis=-1)  # [T, 3]

    # Legs: right at phase t, left half a cycle (plus a personal offset) later.
    leg_parts = {}
    for side, side_sign, shift, gain in (
        ("r", -1.0, 0.0, 1.0),
        ("l", 1.0, person.left_phase, person.left_leg_gain),
    ):
        ts = np.mod(t + shift, 1.0)
        hip_angle = _swing(curves.hip(ts), gain / cadence) * deg
        shank_angle = hip_angle - curves.knee(ts) * deg
        foot_pitch = shank_angle + curves.ankle(ts) * deg
        # Hip joint: half-hip offset rotated by the pelvis roll (z) and yaw.
        half_hip = length["half_hip"]
        hip_offset = np.stack(
            [zeros, side_sign * half_hip * np.cos(pelvis_list), side_sign * half_hip * np.sin(pelvis_list)],
            axis=-1,
        )
        hip_joint = pelvis + _yaw(hip_offset, pelvis_yaw)
        thigh = _yaw(_sagittal(hip_angle), pelvis_yaw)  # [T, 3] unit
        knee_joint = hip_joint + length["upper_leg"] * thigh
        shank = _yaw(_sagittal(shank_angle), pelvis_yaw)
        ankle_joint = knee_joint + length["lower_leg"] * shank
        foot = _yaw(np.stack([np.cos(foot_pitch), zeros, np.sin(foot_pitch)], axis=-1), pelvis_yaw)
        hip_axis = hip_offset / half_hip
        leg_parts[side] = {
            "hip": (pelvis + 0.5 * (hip_joint - pelvis), _yaw(hip_axis, pelvis_yaw)),
            "upper_leg": (hip_joint + 0.5 * length["upper_leg"] * thigh, thigh),
            "lower_leg": (knee_joint + 0.5 * length["lower_leg"] * shank, shank),
            "foot": (ankle_joint + 0.35 * length["foot"] * foot, foot),  # heel sits behind the ankle
        }

    # Upper body: torso pitched by the pelvis pitch and a personal lean, yawed by the thorax torsion.
    thorax_yaw = curves.thorax(t) * deg
    lean = pelvis_pitch * 0.5 + person.torso_lean * deg
    up = _yaw(np.stack([np.sin(lean), zeros, np.cos(lean)], axis=-1), thorax_yaw)  # [T, 3] unit
    neck = pelvis + length["torso"] * up
    parts = {
        "head": (neck + 0.5 * length["head"] * up, up),
        "torso": (pelvis + 0.5 * length["torso"] * up, up),
    }
    for side, side_sign, shift, gain in (
        ("r", -1.0, 0.0, person.arm_swing),
        ("l", 1.0, person.left_phase, person.arm_swing * person.left_arm_gain),
    ):
        ts = np.mod(t + shift, 1.0)
        shoulder_angle = _swing(3.0 - 4.94 * rv - 9.88 * rv * np.cos(two_pi * ts), gain) * deg
        elbow_angle = _swing(curves.elbow(ts), gain) * deg
        lateral_axis = _yaw(np.stack([zeros, side_sign + zeros, zeros], axis=-1), thorax_yaw)
        shoulder_joint = neck + length["half_shoulder"] * lateral_axis
        upper_arm = _yaw(_sagittal(shoulder_angle), thorax_yaw)
        elbow_joint = shoulder_joint + length["upper_arm"] * upper_arm
        forearm = _yaw(_sagittal(shoulder_angle + elbow_angle), thorax_yaw)
        parts[f"shoulder_{side}"] = (neck + 0.5 * length["half_shoulder"] * lateral_axis, lateral_axis)
        parts[f"upper_arm_{side}"] = (shoulder_joint + 0.5 * length["upper_arm"] * upper_arm, upper_arm)
        parts[f"forearm_{side}"] = (elbow_joint + 0.5 * length["lower_arm"] * forearm, forearm)
    for side, legs in leg_parts.items():
        for name, value in legs.items():
            parts[f"{name}_{side}"] = value

    names = [name for name, _, _ in SCATTERERS]
    centres = np.stack([parts[n][0] for n in names], axis=1)  # [T, 16, 3]
    axes = np.stack([parts[n][1] for n in names], axis=1)  # [T, 16, 3]
    lengths = np.array([length[kind] for _, kind, _ in SCATTERERS])  # [16]
    return centres, axes, lengths


# --------------------------------------------------------------------------------------------------
# Radar return and spectrogram
# --------------------------------------------------------------------------------------------------


def ellipsoid_rcs(a: np.ndarray, c: np.ndarray, cos_theta: np.ndarray) -> np.ndarray:
    """RCS of a prolate ellipsoid (a = b) seen at aspect θ from its long axis.

    σ = π·a²·b²·c² / (a²·sin²θ·cos²φ + b²·sin²θ·sin²φ + c²·cos²θ)², which for a = b no longer depends on φ.

    Args:
        a: semi-axis a = b (m), broadcastable.
        c: semi-axis along the segment (m), broadcastable.
        cos_theta: cosine of the aspect angle, broadcastable.

    Returns:
        σ in m², broadcast shape.
    """
    cos2 = cos_theta**2
    sin2 = 1.0 - cos2
    return np.pi * a**4 * c**2 / (a**2 * sin2 + c**2 * cos2) ** 2


def _recording_geometry(
    rng: np.random.Generator, radar: RadarConfig, progression_mid: float
) -> tuple[np.ndarray, float, float]:
    """Place the radar for one recording: returns (radar position [3], aspect deg, range m)."""
    aspect = float(rng.uniform(-radar.aspect_deg_max, radar.aspect_deg_max))
    rng_m = float(rng.uniform(*radar.range_m))
    a = math.radians(aspect)
    position = np.array([progression_mid + rng_m * math.cos(a), rng_m * math.sin(a), radar.radar_height_m])
    return position, abs(aspect), rng_m


def slow_time_signal(
    centres: np.ndarray,
    axes: np.ndarray,
    lengths: np.ndarray,
    radar_position: np.ndarray,
    wavelength: float,
    rcs_scale: np.ndarray,
    range_falloff: bool = True,
    upsample: int = 1,
    num_samples: int | None = None,
) -> np.ndarray:
    """Coherent sum of the 16 ellipsoid returns.

    The kinematics may be sampled ``upsample`` times more coarsely than the radar: ranges and amplitudes
    are then interpolated linearly to the pulse rate before the phase is formed (the body moves smoothly,
    so at 640 Hz the interpolation error of R is ~1e-4 m, a few hundredths of a radian of phase).

    Args:
        centres: [Tc, 16, 3] segment centres (m).
        axes: [Tc, 16, 3] unit segment axes.
        lengths: [16] segment lengths (m); c = length / 2.
        radar_position: [3] antenna position (m).
        wavelength: λ (m).
        rcs_scale: [16] per-segment RCS multipliers.
        range_falloff: multiply the amplitude by 1/R².
        upsample: pulses per kinematic sample.
        num_samples: number of pulses T to return (≤ (Tc − 1)·upsample + 1; default that maximum).

    Returns:
        [T] complex baseband signal Σ √σ·exp(−j4πR/λ) (/R²).
    """
    los = centres - radar_position  # [Tc, 16, 3]
    rng = np.sqrt(np.einsum("tsk,tsk->ts", los, los))  # [Tc, 16] m
    cos_theta = np.abs(np.einsum("tsk,tsk->ts", los, axes)) / rng
    a = np.array([semi for _, _, semi in SCATTERERS])  # [16]
    sigma = ellipsoid_rcs(a, 0.5 * lengths, np.clip(cos_theta, 0.0, 1.0)) * rcs_scale  # [Tc, 16] m²
    amplitude = np.sqrt(sigma)
    if range_falloff:
        amplitude = amplitude / rng**2
    if upsample > 1:
        rng = _upsample_linear(rng, upsample, num_samples)  # [T, 16]
        amplitude = _upsample_linear(amplitude, upsample, num_samples)
    return (amplitude * np.exp(-1j * (4.0 * np.pi / wavelength) * rng)).sum(axis=1)


def _upsample_linear(values: np.ndarray, factor: int, num_samples: int | None) -> np.ndarray:
    """Linear interpolation of [Tc, ...] samples to ``factor`` times the rate: [T, ...]."""
    max_samples = (values.shape[0] - 1) * factor + 1
    num_samples = max_samples if num_samples is None else num_samples
    if num_samples > max_samples:
        raise ValueError(f"cannot interpolate {values.shape[0]} samples ×{factor} to {num_samples}")
    i = np.arange(num_samples)
    lo = np.minimum(i // factor, values.shape[0] - 2)  # [T]
    frac = ((i - lo * factor) / factor).reshape(-1, *([1] * (values.ndim - 1)))
    return values[lo] * (1.0 - frac) + values[lo + 1] * frac


def _add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add circular complex Gaussian noise at ``snr_db`` relative to the mean signal power."""
    power = float(np.mean(np.abs(signal) ** 2))
    sigma = math.sqrt(power / 10.0 ** (snr_db / 10.0) / 2.0)
    noise = rng.normal(0.0, sigma, size=(2, signal.size))
    return signal + noise[0] + 1j * noise[1]


def stft_db(signal: np.ndarray, radar: RadarConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided STFT power in dB (fftshifted), normalised to the maximum and clipped.

    Only frames fully inside the recording are kept (no boundary padding).

    Args:
        signal: [..., N] complex slow-time samples at ``radar.prf``.
        radar: processing settings (Hann window of ``window`` samples, ``hop``, ``nfft``).

    Returns:
        (db [..., nfft, frames] with row 0 the highest Doppler, doppler_hz [nfft] descending, time_s [frames]).
    """
    freqs, time_s, spec = scipy.signal.stft(
        signal,
        fs=radar.prf,
        window="hann",
        nperseg=radar.window,
        noverlap=radar.window - radar.hop,
        nfft=radar.nfft,
        detrend=False,
        return_onesided=False,
        boundary=None,
        padded=False,
        axis=-1,
    )  # spec: [..., nfft, frames], frequencies in FFT order
    order = np.argsort(freqs)[::-1]  # fftshift, then flip so the highest Doppler is row 0
    power = np.abs(spec[..., order, :]) ** 2
    db = 10.0 * np.log10(power + 1e-30)
    db = db - db.max(axis=(-2, -1), keepdims=True)
    db = np.maximum(db, -radar.dynamic_range_db)
    return db, freqs[order], time_s


def simulate_spectrogram(
    person: PersonTraits, rng: np.random.Generator, radar: RadarConfig | None = None
) -> Spectrogram:
    """Simulate one recording of ``person`` walking towards the radar.

    Nuisances drawn from ``rng``: start phase, ±speed_jitter speed, aspect angle, range, SNR, noise.

    Args:
        person: the person's fixed traits.
        rng: generator for this recording's nuisances (the caller controls determinism).
        radar: radar and processing settings (defaults to :class:`RadarConfig`).

    Returns:
        A :class:`Spectrogram` (dB image plus the recording's speed, cycle duration, aspect, range, SNR).
    """
    radar = radar or RadarConfig()
    radar.validate()
    wavelength = radar.wavelength
    speed = person.speed * float(rng.uniform(1.0 - radar.speed_jitter, 1.0 + radar.speed_jitter))
    rv = speed / person.leg_length
    _, dc, _ = gait_timing(rv)
    cadence = person.cadence * float(rng.uniform(1.0 - radar.cadence_jitter, 1.0 + radar.cadence_jitter))
    cycle = dc / cadence  # seconds per gait cycle
    start_phase = float(rng.uniform(0.0, 1.0))
    num_samples = int(round(radar.duration_s * radar.prf))
    step = radar.kinematics_decimation
    num_coarse = -(-(num_samples - 1) // step) + 1
    t = np.arange(num_coarse) * (step / radar.prf)  # [Tc] s, kinematic sampling instants
    phase = start_phase + t / cycle
    progression = speed * t  # RLc·Ht metres per Dc(RV) at cadence 1 equals V·t
    centres, axes, lengths = body_segments(person, phase, progression, rv, cadence)

    radar_position, aspect, range_m = _recording_geometry(rng, radar, 0.5 * speed * radar.duration_s)
    rcs_scale = _rcs_scale(person, radar, rng)  # [16]
    signal = slow_time_signal(
        centres, axes, lengths, radar_position, wavelength, rcs_scale, radar.range_falloff, step, num_samples
    )  # [T] complex
    _check_aliasing(centres, step / radar.prf, radar, wavelength)
    snr_db = float(rng.uniform(*radar.snr_db))
    signal = _add_noise(signal, snr_db, rng)
    db, doppler, time_s = stft_db(signal, radar)
    return Spectrogram(
        db=db,
        doppler_hz=doppler,
        time_s=time_s,
        speed=speed,
        cycle_duration_s=cycle,
        aspect_deg=aspect,
        range_m=range_m,
        snr_db=snr_db,
        start_phase=start_phase,
        wavelength=wavelength,
        dynamic_range_db=radar.dynamic_range_db,
        extras={"rv": rv, "cadence": cadence},
    )


_LIMB_PREFIXES = ("upper_arm", "forearm", "upper_leg", "lower_leg", "foot")
_IS_LIMB = np.array([name.startswith(_LIMB_PREFIXES) for name, _, _ in SCATTERERS])  # [16]
_TORSO_INDEX = [name for name, _, _ in SCATTERERS].index("torso")


def _rcs_scale(person: PersonTraits, radar: RadarConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-segment RCS multipliers of one recording: the person's torso/limb scales times a random
    per-recording log-normal factor (rcs_jitter_db on limbs, torso_rcs_jitter_db on head, torso, shoulders, hips)."""
    scale = np.where(_IS_LIMB, person.limb_rcs, 1.0)  # [16]
    scale[_TORSO_INDEX] = person.torso_rcs
    spread_db = np.where(_IS_LIMB, radar.rcs_jitter_db, radar.torso_rcs_jitter_db)  # [16]
    return scale * 10.0 ** (rng.normal(0.0, 1.0, size=scale.shape) * spread_db / 10.0)


def _check_aliasing(centres: np.ndarray, dt: float, radar: RadarConfig, wavelength: float) -> None:
    """Warn when the fastest scatterer would wrap around the Doppler axis (PRF < 4·v_max/λ)."""
    velocity = np.diff(centres, axis=0) / dt  # [Tc-1, 16, 3] m/s
    v_max = float(np.linalg.norm(velocity, axis=-1).max())
    if radar.prf < 4.0 * v_max / wavelength:
        logger.warning(
            "prf %.0f Hz < 4·v_max/λ = %.0f Hz (v_max %.2f m/s): Doppler will alias",
            radar.prf,
            4.0 * v_max / wavelength,
            v_max,
        )


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def spectrogram_to_image(spec: Spectrogram, resolution: int, colormap: str = "gray") -> np.ndarray:
    """Render a spectrogram as a square uint8 image.

    Args:
        spec: the spectrogram (its ``db`` is max 0, clipped at −spec.dynamic_range_db, which maps to black).
        resolution: output side R in pixels.
        colormap: "gray" (→ [R, R]) or any matplotlib colormap name such as "jet" (→ [R, R, 3]).

    Returns:
        uint8 array, [R, R] for gray, [R, R, 3] otherwise; top row = highest Doppler.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    db = np.asarray(spec.db, dtype=np.float64)
    span = float(spec.dynamic_range_db)
    unit = np.clip((db + span) / span, 0.0, 1.0).astype(np.float32)  # [D, F] in [0, 1], black = clip level
    resized = np.asarray(
        Image.fromarray(unit).resize((resolution, resolution), Image.Resampling.BILINEAR), dtype=np.float64
    )
    resized = np.clip(resized, 0.0, 1.0)
    if colormap == "gray":
        return np.round(resized * 255.0).astype(np.uint8)
    import matplotlib  # local import: only colour rendering needs it

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError as err:
        raise ValueError(f"unknown colormap {colormap!r}; use 'gray' or a matplotlib name such as 'jet'") from err
    rgb = cmap(resized)[..., :3]  # [R, R, 3] in [0, 1]
    return np.round(rgb * 255.0).astype(np.uint8)
