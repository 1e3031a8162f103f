from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zimage_mcp import hookimpl
from zimage_mcp.contract import (
    BackendContext,
    BackendLoadError,
    Capabilities,
    Defaults,
    Limits,
    NotInstalledError,
    UnknownLoraError,
    UnknownVariantError,
    VariantSpec,
    WeightsLocation,
)
from zimage_mcp.registry import Registry
from zimage_mcp.registry.catalog import Catalog
from zimage_mcp.registry.plugin_manager import PluginManager, describe_plugins, load_plugins
from zimage_mcp.registry.settings import Settings

GB = 1024**3


class FakeBackend:
    """Counts unloads; reports a fixed VRAM size. Tests the registry's policy, not the engine."""

    def __init__(self, spec: VariantSpec, vram: int) -> None:
        self.spec, self.vram, self.unloads = spec, vram, 0

    def generate(self, request: Any, progress: Any, should_stop: Any) -> Any:
        raise NotImplementedError

    def unload(self) -> None:
        self.unloads += 1

    def vram_bytes(self) -> int:
        return self.vram


def spec(vid: str, kind: str = "turbo", weights: WeightsLocation | None = None) -> VariantSpec:
    return VariantSpec(
        id=vid, title=vid.title(), kind=kind, capabilities=Capabilities(), defaults=Defaults(steps=8, guidance=0.0, shift=3.0),
        limits=Limits(), weights=weights or WeightsLocation(),
    )  # fmt: skip


class Factory:
    """A backend factory that counts builds and can be told to fail."""

    def __init__(self, vram: int = GB, fail: bool = False) -> None:
        self.vram, self.fail, self.builds, self.specs = vram, fail, 0, []  # type: ignore[var-annotated]

    def __call__(self, spec: VariantSpec, ctx: BackendContext) -> FakeBackend:
        self.builds += 1
        self.specs.append(spec)
        if self.fail:
            raise RuntimeError("CUDA is not available")
        return FakeBackend(spec, self.vram)


def variants_plugin(*items: tuple[VariantSpec, Callable[..., Any], tuple[str, ...]]) -> object:
    class Plugin:
        @hookimpl
        def zimage_register_variants(self, register):  # type: ignore[no-untyped-def]
            for s, factory, aliases in items:
                register(s, factory, aliases=aliases)

    return Plugin()


def registry_with(*plugins: tuple[str, object], catalog: Catalog | None = None, **settings: Any) -> Registry:
    pm = PluginManager()
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return Registry(Settings.from_env(None, **settings), catalog or Catalog(), pm)


def test_resolve_ids_aliases_and_default() -> None:
    registry = Registry.from_settings(Settings.from_env({}, default_model="base"))
    assert registry.default_variant == "z-image-base"
    assert registry.resolve(None).spec.id == "z-image-base"
    assert registry.resolve("TURBO").spec.id == registry.resolve("z-image-turbo").spec.id == "z-image-turbo"
    assert registry.resolve("edit").plugin == "zimage_engine"
    with pytest.raises(UnknownVariantError) as info:
        registry.resolve("flux")
    assert str(info.value) == (
        "unknown model 'flux'; valid names: z-image-turbo (alias turbo), z-image-base (alias base), z-image-edit (alias edit)"
    )
    with pytest.raises(UnknownLoraError, match="unknown LoRA 'x'; valid LoRAs: none"):
        registry.resolve_lora("x")
    assert registry.lora_variant_target("turbo") is None


def test_bad_default_model_is_a_problem_not_a_crash() -> None:
    registry = Registry.from_settings(Settings.from_env({"ZIMAGE_MCP_DEFAULT_MODEL": "flux"}))
    assert registry.default_variant == "z-image-turbo"
    assert registry.problems()[0].startswith("ZIMAGE_MCP_DEFAULT_MODEL: unknown model 'flux'")


def test_duplicates_first_registered_wins() -> None:
    first, second = Factory(), Factory()
    registry = registry_with(
        ("one", variants_plugin((spec("v-a"), first, ("a",)), (spec("v-b"), first, ("shared",)))),
        (
            "two",
            variants_plugin((spec("v-a"), second, ()), (spec("v-c"), second, ("shared", "c")), (spec("a"), second, ())),
        ),
    )
    assert [e.spec.id for e in registry.variants()] == ["v-a", "v-b", "v-c"]
    assert registry.resolve("v-a").plugin == "one" and registry.resolve("shared").spec.id == "v-b"
    assert registry.resolve("c").spec.id == "v-c"
    assert [str(d) for d in registry.duplicates()] == [
        "duplicate variant 'v-a': kept the one from plugin 'one', ignored plugin 'two'",
        "duplicate alias 'shared': kept the one from plugin 'one', ignored plugin 'two'",
        "duplicate variant 'a': kept the one from plugin 'one', ignored plugin 'two'",
    ]
    assert registry.problems() == [str(d) for d in registry.duplicates()]


def test_a_builtin_beats_a_plugin_reusing_its_id() -> None:
    pm = load_plugins()
    pm.register(variants_plugin((spec("z-image-turbo"), Factory(), ("turbo",))), name="impostor")
    registry = Registry.from_settings(Settings.from_env({}), pm)
    assert registry.resolve("turbo").plugin == "zimage_engine"
    assert (
        "duplicate variant 'z-image-turbo': kept the one from plugin 'zimage_engine', ignored plugin 'impostor'"
        in registry.problems()
    )


def test_a_plugin_that_raises_is_listed_failed_and_others_work() -> None:
    class Broken:
        @hookimpl
        def zimage_register_variants(self, register):  # type: ignore[no-untyped-def]
            register(spec("half-done"), Factory())
            raise ValueError("oops")

    class BadCall:
        @hookimpl
        def zimage_register_variants(self, register):  # type: ignore[no-untyped-def]
            register(spec("Not_Kebab"), Factory())

    pm = load_plugins()
    pm.register(Broken(), name="broken")
    pm.register(BadCall(), name="badcall")
    registry = Registry.from_settings(Settings.from_env({}), pm)
    assert [e.spec.id for e in registry.variants()] == ["z-image-turbo", "z-image-base", "z-image-edit"]
    assert registry.problems() == [
        "plugin 'broken' failed in zimage_register_variants: ValueError: oops",
        "plugin 'badcall' failed in zimage_register_variants: RegistryError: register(): variant id 'Not_Kebab' "
        "must be lowercase kebab-case (z-image-turbo)",
    ]
    rows = {row["name"]: row for row in describe_plugins(pm)}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"] == "ValueError: oops"
    assert rows["zimage_engine"]["status"] == "ok"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r("x y", "/f.safetensors"), "LoRA name 'x y' must be"),
        (lambda r: r("x", 3), "file must be a path"),
        (lambda r: r("x", "/f.safetensors", scale="1"), "scale must be a number"),
        (lambda r: r("x", "/f.safetensors", trigger_words=[1]), "trigger_words must be strings"),
    ],
)
def test_malformed_lora_registration(call: Callable[..., None], message: str) -> None:
    class Plugin:
        @hookimpl
        def zimage_register_loras(self, register):  # type: ignore[no-untyped-def]
            call(register)

    registry = registry_with(("p", Plugin()))
    assert message in registry.problems()[0]


def test_lora_refusals_from_any_plugin() -> None:
    class Plugin:
        @hookimpl
        def zimage_register_loras(self, register):  # type: ignore[no-untyped-def]
            register("pickled", "/l/x.ckpt")
            register("text", "/l/x.txt")
            register("ok", "/l/ok.safetensors", base="v-a")
            register("ok", "/l/other.safetensors")
            register("nobase", "/l/nb.safetensors", base="missing")

    registry = registry_with(
        (
            "vars",
            variants_plugin(
                (spec("v-a"), Factory(), ()),
            ),
        ),
        ("p", Plugin()),
    )
    assert [lora.name for lora in registry.loras()] == ["ok"]
    assert registry.problems() == [
        "LoRA 'pickled' (plugin 'p') refused: /l/x.ckpt: pickle formats are never loaded",
        "LoRA 'text' (plugin 'p') refused: /l/x.txt: not a .safetensors file",
        "LoRA 'nobase' (plugin 'p') refused: base variant 'missing' does not exist; valid: v-a",
        "duplicate lora 'ok': kept the one from plugin 'p', ignored plugin 'p'",
    ]


def test_install_status_without_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    single = tmp_path / "one.safetensors"
    single.write_bytes(b"x")
    hub = Path(Settings.from_env().hf_home or "") / "hub" / "models--org--cached"
    old, new = hub / "snapshots" / "old", hub / "snapshots" / "abc123"
    for snap in (old, new):
        snap.mkdir(parents=True)
        (snap / "model_index.json").write_text("{}")
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc123\n")
    for part in ("tokenizer", "vae", "text_encoder"):  # what a single DiT file takes from the snapshot
        (new / part).mkdir()
    items = [
        (spec("v-path", weights=WeightsLocation(path=str(folder), repo_id="org/cached")), Factory(), ()),
        (spec("v-file", weights=WeightsLocation(single_file=str(single), repo_id="org/cached")), Factory(), ()),
        (spec("v-pickle", weights=WeightsLocation(single_file=str(tmp_path / "w.ckpt"))), Factory(), ()),
        (spec("v-hub", weights=WeightsLocation(path=str(tmp_path / "empty"), repo_id="org/cached")), Factory(), ()),
        (spec("v-missing", weights=WeightsLocation(repo_id="org/absent")), Factory(), ("miss",)),
        (spec("v-unpublished", weights=WeightsLocation(repo_id="org/soon", published=False)), Factory(), ()),
        (spec("v-none"), Factory(), ()),
    ]
    registry = registry_with(("p", variants_plugin(*items)))
    status = {e.spec.id: registry.install_status(e.spec.id) for e in registry.variants()}
    assert (status["v-path"].source, status["v-path"].location) == ("path", str(folder))
    assert (status["v-file"].source, status["v-file"].location) == ("single_file", str(single))
    assert status["v-file"].folder == str(new)  # the factory gets weights.path = the snapshot
    assert status["v-pickle"].how_to_install.startswith(f"single_file {tmp_path / 'w.ckpt'} refused: pickle formats")
    assert (status["v-hub"].source, status["v-hub"].location) == ("hf_cache", str(new))
    run_sh = Path(__file__).resolve().parents[1] / "run.sh"  # a command that exists, wherever the caller stands
    assert status["v-missing"].how_to_install == f"run `{run_sh} cli pull miss` or `hf download org/absent`"
    assert not status["v-missing"].installed and status["v-missing"].source == "missing"
    assert status["v-unpublished"].how_to_install.startswith("weights not published yet (org/soon)")
    assert status["v-none"] == status["v-none"].__class__(True, None, "plugin", "")
    # HF_HUB_CACHE wins over HF_HOME; refs/main absent -> the newest snapshot
    (hub / "refs" / "main").unlink()
    moved = registry_with(("p", variants_plugin(*items)), hf_hub_cache=str(hub.parent))
    assert moved.install_status("v-hub").location in (str(old), str(new))
    elsewhere = registry_with(("p", variants_plugin(*items)), hf_hub_cache=str(tmp_path / "other"))
    assert not elsewhere.install_status("v-hub").installed
    with pytest.raises(NotInstalledError, match="v-missing is not installed: run `/.*/run.sh cli pull miss`"):
        registry.backend("miss")


def registry_of(factories: dict[str, Factory], **settings: Any) -> Registry:
    return registry_with(("p", variants_plugin(*[(spec(v), f, ()) for v, f in factories.items()])), **settings)


def test_backend_is_built_lazily_once_and_gets_the_context() -> None:
    factory = Factory()
    registry = registry_of({"v-a": factory}, device="cpu", dtype="float32")
    assert factory.builds == 0 and not registry.is_loaded("v-a")
    backend = registry.backend("v-a")
    assert registry.backend("v-a") is backend and factory.builds == 1 and registry.is_loaded("v-a")
    from zimage_mcp.registry.settings import default_compile_cache_dir

    assert registry.settings.backend_context() == BackendContext(
        device="cpu",
        dtype="float32",
        hf_home=registry.settings.hf_home,
        compile_cache_dir=str(default_compile_cache_dir()),
        defer_compile=True,  # [runtime] compile_in_background's default
    )


def test_factory_gets_the_located_snapshot(tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    factory = Factory()
    registry = registry_with(
        ("p", variants_plugin((spec("v-a", weights=WeightsLocation(repo_id="org/m")), factory, ()))),
        hf_hub_cache=str(tmp_path / "hub"),
    )
    registry.backend("v-a")
    assert factory.specs[0].weights.path == str(snap) and factory.specs[0].weights.repo_id == "org/m"


def test_a_failed_build_marks_only_that_variant_until_reset() -> None:
    bad, good = Factory(fail=True), Factory()
    registry = registry_of({"v-bad": bad, "v-good": good})
    with pytest.raises(BackendLoadError, match="v-bad failed to load: RuntimeError: CUDA is not available"):
        registry.backend("v-bad")
    assert registry.failed() == {"v-bad": "RuntimeError: CUDA is not available"}
    registry.backend("v-good")
    with pytest.raises(BackendLoadError, match="failed to load earlier"):
        registry.backend("v-bad")
    assert bad.builds == 1
    bad.fail = False
    registry.reset_failed("v-bad")
    assert registry.backend("v-bad").spec.id == "v-bad" and registry.failed() == {} and bad.builds == 2


def test_lora_variant_shares_the_base_backend() -> None:
    class Loras:
        @hookimpl
        def zimage_register_loras(self, register):  # type: ignore[no-untyped-def]
            register("style", "/l/style.safetensors", base="v-a")

    factory = Factory()
    registry = registry_with(
        (
            "p",
            variants_plugin(
                (spec("v-a"), factory, ()),
            ),
        ),
        ("l", Loras()),
    )
    entry = registry.resolve("lora:style")
    assert (entry.spec.kind, entry.spec.base, entry.spec.lora, entry.plugin) == ("lora", "v-a", "style", "l")
    assert registry.backend("lora:style") is registry.backend("v-a") and factory.builds == 1
    assert registry.is_loaded("lora:style")


def test_vram_budget_unloads_least_recently_used() -> None:
    factories = {v: Factory(vram=4 * GB) for v in ("v-a", "v-b", "v-c")}
    registry = registry_of(factories, vram_budget_gb=9)
    a = registry.backend("v-a")
    b = registry.backend("v-b")
    registry.backend("v-a")  # a is now more recent than b
    registry.backend("v-c")  # 12 GB > 9 GB: b goes
    assert (a.unloads, b.unloads) == (0, 1)  # type: ignore[attr-defined]
    assert [registry.is_loaded(v) for v in factories] == [True, False, True]
    registry.backend("v-b")  # the remembered 4 GB estimate evicts a before b is built
    assert a.unloads == 1 and factories["v-b"].builds == 2  # type: ignore[attr-defined]


def test_one_backend_over_budget_still_loads() -> None:
    registry = registry_of({"v-a": Factory(vram=4 * GB), "v-b": Factory(vram=20 * GB)}, vram_budget_gb=8)
    registry.backend("v-a")
    registry.backend("v-b")
    assert not registry.is_loaded("v-a") and registry.is_loaded("v-b")


def test_no_budget_keeps_everything() -> None:
    registry = registry_of({v: Factory(vram=100 * GB) for v in ("v-a", "v-b")})
    registry.backend("v-a")
    registry.backend("v-b")
    assert registry.is_loaded("v-a") and registry.is_loaded("v-b")


def test_release_idle_and_unload_all() -> None:
    registry = registry_of({"v-a": Factory(), "v-b": Factory()}, idle_unload_seconds=60)
    a = registry.backend("v-a")
    b = registry.backend("v-b")
    assert registry.release_idle() == []
    later = time.monotonic() + 61
    registry.backend("v-b")
    assert registry.release_idle(now=later - 30) == []
    assert registry.release_idle(now=later) == ["v-a", "v-b"]
    assert (a.unloads, b.unloads) == (1, 1)  # type: ignore[attr-defined]
    registry.backend("v-a")
    registry.unload_all()
    assert not registry.is_loaded("v-a") and a.unloads == 1  # a fresh backend was built and unloaded
    never = registry_of({"v-a": Factory()}, idle_unload_seconds=0)
    never.backend("v-a")
    assert never.release_idle(now=time.monotonic() + 1e9) == []


def test_concurrent_first_use_builds_once() -> None:
    class SlowFactory(Factory):
        def __call__(self, spec: VariantSpec, ctx: BackendContext) -> FakeBackend:
            time.sleep(0.05)
            return super().__call__(spec, ctx)

    factory = SlowFactory()
    registry = registry_of({"v-a": factory})
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(registry.backend("v-a"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert factory.builds == 1 and len({id(r) for r in results}) == 1
