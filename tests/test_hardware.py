"""Hardware presets: every preset loads with physical values; bad files give clear errors."""

import jax
import numpy as np
import pytest

from diffperf.hardware import PresetError, list_presets, load_hardware


EXPECTED = {
    "h100-sxm",
    "h800",
    "h200-sxm",
    "b200-sxm",
    "gb200",
    "a100-sxm",
    "mi300x",
    "mi355x",
    "tpu-v5p",
    "tpu-v6e",
    "gaudi3",
    "xeon-8480",
}


def test_all_expected_presets_ship():
    assert EXPECTED <= set(list_presets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loads_with_physical_values(name):
    hw = load_hardware(name)
    a, f = hw.accel, hw.fabric
    assert float(a.peak_bf16_flop_per_s) > 1e13
    assert float(a.hbm.bw_bytes_per_s) > 1e11
    assert float(a.hbm.capacity_bytes) > 1e10
    assert 0.5 < float(a.usable_memory_fraction) <= 1.0
    assert float(f.scaleup_domain_size) >= 2
    assert float(a.power_w) > 100
    # every efficiency is a realistic fraction, not 1.0 and not 0
    for fam in (a.eff.gemm, a.eff.attention, a.eff.moe, a.eff.comm):
        for leaf_name in fam.__dataclass_fields__:
            v = float(getattr(fam, leaf_name))
            assert np.isfinite(v) and v >= 0, (name, leaf_name, v)
    assert 0.3 < float(a.eff.gemm.compute_eff_bf16) < 1.0
    assert 0.3 < float(a.eff.gemm.mem_eff) < 1.0


def test_aliases_and_units():
    hw = load_hardware("H200")  # alias, any case
    assert hw.name == "h200-sxm"
    # 4.8 TB/s datasheet -> SI bytes/s; 141 GB -> bytes
    np.testing.assert_allclose(hw.accel.hbm.bw_bytes_per_s, 4.8e12, rtol=1e-6)
    np.testing.assert_allclose(hw.accel.hbm.capacity_bytes, 141e9, rtol=1e-6)
    assert load_hardware("gb200").fabric.scaleup_domain_size == 72


def test_native_precision_fallback():
    h100 = load_hardware("h100-sxm")
    b200 = load_hardware("b200-sxm")
    a100 = load_hardware("a100-sxm")
    assert h100.accel.compute_precision("nvfp4") == "fp8"  # no fp4 tensor cores on Hopper
    assert b200.accel.compute_precision("nvfp4") == "fp4"
    assert a100.accel.compute_precision("fp8") == "bf16"
    assert float(a100.accel.peak_flop_per_s("fp8")) == float(a100.accel.peak_bf16_flop_per_s)


def test_user_toml_inherit(tmp_path):
    p = tmp_path / "my.toml"
    p.write_text(
        'name = "h100-fast-hbm"\ninherit = "h100-sxm"\n'
        "[memory]\nhbm_bandwidth_gb_per_s = 6000.0\n"
        "[efficiency.gemm]\nmem_eff = 0.7\n"
    )
    hw = load_hardware(str(p))
    assert hw.name == "h100-fast-hbm"
    np.testing.assert_allclose(hw.accel.hbm.bw_bytes_per_s, 6e12)
    np.testing.assert_allclose(hw.accel.eff.gemm.mem_eff, 0.7)
    base = load_hardware("h100-sxm")
    assert float(hw.accel.peak_bf16_flop_per_s) == float(base.accel.peak_bf16_flop_per_s)


@pytest.mark.parametrize(
    "body, match",
    [
        (
            'inherit = "h100-sxm"\n[memory]\nhbm_bandwidth_gb_per_s = -1.0\n',
            "memory.hbm_bandwidth_gb_per_s = -1.0",
        ),
        (
            'inherit = "h100-sxm"\n[memory]\nhbm_bandwidth_gb_per_s = "fast"\n',
            "hbm_bandwidth_gb_per_s = 'fast' must be a number",
        ),
        ('inherit = "h100-sxm"\n[memory]\nhbm_bandwith_gb_per_s = 1.0\n', "unknown key"),
        ('inherit = "h100-sxm"\n[memory\n', "malformed TOML"),
        ('inherit = "h100-sxm"\nefficiency_profile = "volta"\n', "efficiency_profile = 'volta'"),
        ('inherit = "h100-sxm"\n[efficiency.gemm]\nmem_eff = -0.5\n', "efficiency.gemm.mem_eff"),
        ('inherit = "h100-sxm"\n[efficiency.gemmm]\nmem_eff = 0.5\n', "efficiency.gemmm"),
        # a fraction of 0 would make the op free (costs divide safely), above 1 beats the peak
        (
            'inherit = "h100-sxm"\n[efficiency.moe]\nact_mem_eff = 0.0\n',
            r"efficiency.moe.act_mem_eff = 0.0 must be a fraction in \(0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.attention]\nmla_decode_mem_eff = 1.5\n',
            r"efficiency.attention.mla_decode_mem_eff = 1.5 must be a fraction",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.attention]\nmla_module_launch_overlap = 1.2\n',
            r"efficiency.attention.mla_module_launch_overlap = 1.2 must be a fraction in \[0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.comm]\nalltoall_small_group_loss = 2.5\n',
            r"efficiency.comm.alltoall_small_group_loss = 2.5 must be a fraction in \[0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.gemm]\nunaligned_m_eff = 0.0\n',
            r"efficiency.gemm.unaligned_m_eff = 0.0 must be a fraction in \(0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.gemm]\nwave_tail_share = 1.5\n',
            r"efficiency.gemm.wave_tail_share = 1.5 must be a fraction in \[0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.gemm]\nscaled_wave_tail_share = 1.5\n',
            r"efficiency.gemm.scaled_wave_tail_share = 1.5 must be a fraction in \[0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.gemm]\nfp4_tile_k_s = -1e-9\n',
            "efficiency.gemm.fp4_tile_k_s = -1e-09 must be a finite non-negative number",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.moe]\nwo_tile_m_elems = 0.0\n',
            "efficiency.moe.wo_tile_m_elems = 0.0 must be a finite positive number",
        ),
        # a bandwidth factor of 0 would make that collective free
        (
            'inherit = "h100-sxm"\n[efficiency.comm]\ncombine_bw_factor = 0\n',
            "efficiency.comm.combine_bw_factor = 0 must be a finite positive number",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.comm]\nll_combine_bw_factor = 1.5\n',
            r"efficiency.comm.ll_combine_bw_factor = 1.5 must be a fraction in \(0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.comm]\nll_combine_bw_factor = 0.0\n',
            r"efficiency.comm.ll_combine_bw_factor = 0.0 must be a fraction in \(0, 1\]",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.moe]\nwo_tile_m_large_elems = 0\n',
            "efficiency.moe.wo_tile_m_large_elems = 0 must be a finite positive number",
        ),
        (
            'inherit = "h100-sxm"\n[efficiency.attention]\noverlap_p = 0.0\n',
            r"efficiency.attention.overlap_p = 0.0 must be a p-norm exponent >= 1$",
        ),
        ('inherit = "h100-sxm"\n[compute]\nbf16_tflops = 0\n', "compute.bf16_tflops = 0"),
        ('inherit = "nonexistent-gpu"\n', "nonexistent-gpu"),
        ('name = "x"\nkind = "gpu"\nefficiency_profile = "hopper"\n', "section \\[compute\\]"),
    ],
)
def test_bad_files_name_field_and_value(tmp_path, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(PresetError, match=match):
        load_hardware(str(p))


def test_unknown_preset_lists_presets():
    with pytest.raises(PresetError, match="h100-sxm"):
        load_hardware("h1000")


def test_hardware_is_a_differentiable_pytree():
    hw = load_hardware("h100-sxm")
    leaves = jax.tree_util.tree_leaves(hw)
    assert len(leaves) > 40
    assert all(np.issubdtype(np.asarray(x).dtype, np.floating) for x in leaves)
