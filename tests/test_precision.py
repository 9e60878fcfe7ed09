"""`--mixed-precision` picks the policy from what the machine has: bfloat16 only on a CPU that computes in it,
float32 (with one line saying why) on one that would emulate it. Nothing here trains but the last test (a few
steps, marked slow)."""

import dataclasses
import sys

import keras
import pytest

from kcnn.backends import precision as utils
from kcnn.cli import doctor
from kcnn.training import job as workflow
from kcnn.errors import InvalidArgumentError

# /proc/cpuinfo as four kinds of machines print it (one processor of each; the flags as their kernels list them).
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq \
pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm \
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext invpcid_single ssbd ibrs ibpb stibp vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 \
clzero xsaveerptr rdpru arat npt nrip_save umip vaes vpclmulqdq rdpid fsrm
bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq \
ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm \
3dnowprefetch ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f \
avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves \
avx_vnni avx512_bf16 arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni \
avx512_bitalg avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 \
avx512_fp16 amx_tile amx_int8 arch_capabilities
vmx flags\t: vnmi preemption_timer invvpid ept_x_only ept_ad ept_1gb flexpriority tsc_offset vtpr mtf vapic ept vpid
bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb
"""
COOPER_LAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse \
sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts rep_good nopl xtopology \
nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid \
dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch \
cpuid_fault epb cat_l3 cdp_l3 invpcid_single intel_ppin ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow vnmi \
flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm mpx rdt_a avx512f avx512dq \
rdseed adx smap clflushopt clwb intel_pt avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc \
cqm_occup_llc cqm_mbm_total cqm_mbm_local avx512_bf16 dtherm ida arat pln pts pku ospke avx512_vnni md_clear \
flush_l1d arch_capabilities
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""
GRAVITON3 = GRAVITON2.replace("asimddp ssbs", "asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
                              "dcpodp svei8mm svebf16 i8mm bf16 dgh rng")
POWER9 = "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nclock\t\t: 2200.000000MHz\n"

NO_NATIVE_X86 = "no native bfloat16 on this CPU (no AVX-512 BF16 or AMX in its flags), where float32 is faster"
FALLBACK_LINE = f"kcnn: --mixed-precision: training stays in float32: {NO_NATIVE_X86}"


@pytest.fixture
def machine(monkeypatch):
    """`machine(cpuinfo)`: this process sees a CPU-only machine with that /proc/cpuinfo, whatever it runs on."""
    monkeypatch.delenv(utils.PRECISION_OVERRIDE, raising=False)
    monkeypatch.setattr(utils, "_told", set())  # nothing printed yet
    monkeypatch.setattr(utils, "_compute_device", lambda backend: "cpu")

    def use(cpuinfo):
        monkeypatch.setattr(utils, "_this_cpu_flags", lambda: utils.cpu_flags(cpuinfo))

    return use


@pytest.fixture
def global_policy():
    """The caller's global policy, put back after the test whatever happens."""
    before = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("cpuinfo, sets, policy, reason", [
    (EPYC_AVX2, ["AVX2"], "float32", NO_NATIVE_X86),
    (SAPPHIRE_RAPIDS, ["AVX2", "AVX-512F", "AVX-512 BF16", "AMX"], "mixed_bfloat16",
     "native bfloat16 (AMX, AVX-512 BF16)"),
    (COOPER_LAKE, ["AVX2", "AVX-512F", "AVX-512 BF16"], "mixed_bfloat16", "native bfloat16 (AVX-512 BF16)"),
    (GRAVITON2, ["NEON"], "float32",
     "no native bfloat16 on this CPU (no BF16 in its flags), where float32 is faster"),
    (GRAVITON3, ["NEON", "SVE", "BF16"], "mixed_bfloat16", "native bfloat16 (BF16)"),
], ids=["epyc-avx2", "sapphire-rapids", "cooper-lake", "graviton2", "graviton3"])
def test_the_cpu_flags_decide(cpuinfo, sets, policy, reason, monkeypatch):
    monkeypatch.delenv(utils.PRECISION_OVERRIDE, raising=False)
    flags = utils.cpu_flags(cpuinfo)
    assert utils.instruction_sets(flags) == sets
    assert utils.precision_decision(device="cpu", cpuinfo=cpuinfo) == (policy, reason)


def test_a_cpu_whose_flags_cannot_be_read_stays_in_float32(monkeypatch):
    monkeypatch.delenv(utils.PRECISION_OVERRIDE, raising=False)
    assert utils.cpu_flags(POWER9) is None and utils.cpu_flags("") is None
    policy, reason = utils.precision_decision(device="cpu", cpuinfo=POWER9)
    assert policy == "float32"
    assert "cannot be read" in reason and "KCNN_MIXED_PRECISION=bfloat16" in reason


def test_this_machines_flags_are_read_from_proc_cpuinfo():
    if not sys.platform.startswith("linux"):  # runs in CI (Linux); other systems' readers are tested with their text
        pytest.skip("/proc/cpuinfo is Linux's")
    with open("/proc/cpuinfo") as f:
        assert utils.cpu_flags() == utils.cpu_flags(f.read()) != None  # noqa: E711


@pytest.mark.parametrize("backend, device, policy", [
    ("torch", "cuda", "mixed_float16"),  # torch's usual choice on CUDA, as before
    ("tensorflow", "cuda:9.0", "mixed_bfloat16"),  # Hopper computes in bfloat16: no loss scaling needed
    ("jax", "cuda:8.0", "mixed_bfloat16"),
    ("jax", "cuda:7.5", "mixed_float16"),  # a T4 has float16 tensor cores, no bfloat16
    ("tensorflow", "gpu", "mixed_float16"),  # compute capability unknown: Keras' choice for GPUs
    ("torch", "mps", "mixed_float16"),
    ("jax", "tpu", "mixed_bfloat16"),
])
def test_accelerators_keep_half_precision_whatever_the_cpu(backend, device, policy, monkeypatch):
    monkeypatch.delenv(utils.PRECISION_OVERRIDE, raising=False)
    assert utils.precision_decision(backend=backend, device=device, cpuinfo=EPYC_AVX2)[0] == policy


def test_without_native_bfloat16_it_falls_back_with_one_line(machine, capsys):
    machine(EPYC_AVX2)
    assert utils.mixed_precision_policy() == "float32"
    assert utils.mixed_precision_policy() == "float32"
    assert capsys.readouterr().err.splitlines() == [FALLBACK_LINE]  # once, however often it is asked


def test_with_native_bfloat16_it_says_nothing(machine, capsys):
    machine(SAPPHIRE_RAPIDS)
    assert utils.mixed_precision_policy() == "mixed_bfloat16"
    assert capsys.readouterr().err == ""


def test_the_environment_variable_overrides_the_decision(machine, monkeypatch, capsys):
    machine(EPYC_AVX2)
    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "bfloat16")
    assert utils.precision_decision() == ("mixed_bfloat16", "set by KCNN_MIXED_PRECISION=bfloat16")
    assert utils.mixed_precision_policy() == "mixed_bfloat16"
    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "auto")
    assert utils.precision_decision()[0] == "float32"

    machine(SAPPHIRE_RAPIDS)
    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "Float32")
    assert utils.mixed_precision_policy() == "float32"
    assert capsys.readouterr().err.splitlines() == [
        "kcnn: --mixed-precision: training stays in float32: set by KCNN_MIXED_PRECISION=Float32"]
    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "float16")
    assert utils.mixed_precision_policy() == "mixed_float16"
    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "half")
    with pytest.raises(InvalidArgumentError, match=r"Received: KCNN_MIXED_PRECISION='half'"):
        utils.mixed_precision_policy()


@pytest.mark.parametrize("cpuinfo, inside", [(EPYC_AVX2, "float32"), (SAPPHIRE_RAPIDS, "mixed_bfloat16")])
def test_the_workflows_context_applies_the_decision_and_restores_the_callers_policy(
        cpuinfo, inside, machine, global_policy):
    machine(cpuinfo)
    keras.mixed_precision.set_global_policy("mixed_float16")  # the caller's, unlike either decision
    with workflow.precision(True):
        assert keras.mixed_precision.global_policy().name == inside
        assert workflow.dtype_policy(True) == inside  # what metrics.json records
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    with workflow.precision(False):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert workflow.dtype_policy(False) == "mixed_float16"
    with pytest.raises(RuntimeError), workflow.precision(True):
        raise RuntimeError("a failed run")
    assert keras.mixed_precision.global_policy().name == "mixed_float16"


def test_the_doctor_reports_the_cpu_and_the_policy(machine, monkeypatch):
    machine(EPYC_AVX2)
    report = doctor.doctor(check_backends=False)
    text = doctor.format_report(report)
    assert f"  CPU                {report.cpu}\n" in text
    assert report.cpu.endswith(" logical cores: AVX2")
    assert f"  --mixed-precision  float32: {NO_NATIVE_X86}\n" in text

    machine(SAPPHIRE_RAPIDS)
    report = dataclasses.replace(report, cpu=doctor._cpu(), mixed_precision=doctor._mixed_precision())
    text = doctor.format_report(report)
    assert "logical cores: AVX2, AVX-512F, AVX-512 BF16, AMX\n" in text
    assert "  --mixed-precision  mixed_bfloat16: native bfloat16 (AMX, AVX-512 BF16)\n" in text

    monkeypatch.setenv(utils.PRECISION_OVERRIDE, "half")  # reported, not raised: the doctor completes
    assert "Received: KCNN_MIXED_PRECISION='half'" in doctor._mixed_precision()[1]
