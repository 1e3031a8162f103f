from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zimage_mcp.contract import RegistryError
from zimage_mcp.registry.catalog import BUILTIN_FILE, load_catalog


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def by_id(catalog):  # type: ignore[no-untyped-def]
    return {v.spec.id: v for v in catalog.variants}


def test_shipped_catalogue() -> None:
    assert BUILTIN_FILE.is_symlink() and BUILTIN_FILE.resolve() == (BUILTIN_FILE.parent.parent / "registry.toml")
    catalog = load_catalog()
    assert catalog.problems == ()
    v = by_id(catalog)
    turbo, base, edit = v["z-image-turbo"].spec, v["z-image-base"].spec, v["z-image-edit"].spec
    assert (turbo.defaults.steps, turbo.defaults.guidance, turbo.defaults.shift) == (8, 0.0, None)
    assert (base.defaults.steps, base.defaults.guidance, base.defaults.shift) == (50, 4.0, None)
    assert (edit.defaults.steps, edit.defaults.guidance, edit.defaults.shift) == (50, 4.0, None)
    assert turbo.weights.repo_id == "Tongyi-MAI/Z-Image-Turbo" and base.weights.repo_id == "Tongyi-MAI/Z-Image"
    assert edit.weights.repo_id == "Tongyi-MAI/Z-Image-Edit" and not edit.weights.published
    assert turbo.capabilities.edit_modes() == ("img2img", "inpaint") == base.capabilities.edit_modes()
    assert edit.capabilities.edit_modes() == ("reference",) and edit.limits.max_reference_images == 4
    assert turbo.shares == base.shares == ("text_encoder", "vae") and edit.shares == ()
    assert [v[k].aliases for k in v] == [("turbo",), ("base",), ("edit",)]
    assert (turbo.limits.min_side, turbo.limits.max_side, turbo.limits.size_multiple) == (256, 2048, 16)
    assert turbo.weights.path is None and catalog.lora_dir_configured is False


def test_user_file_deep_merges_per_variant_table(tmp_path: Path) -> None:
    (tmp_path / "models" / "turbo").mkdir(parents=True)
    user = write(
        tmp_path / "registry.toml",
        """
        [loras]
        dir = "my-loras"
        [variants.z-image-turbo]
        aliases = ["fast"]
        [variants.z-image-turbo.weights]
        path = "models/turbo"
        [variants.z-image-turbo.defaults]
        steps = 6
        [variants.my-finetune]
        plugin = "zimage_engine"
        title = "My fine-tune"
        kind = "turbo"
        weights = { single_file = "/w/ft.safetensors" }
        defaults = { steps = 9, guidance = 1, shift = 3 }
        """,
    )
    catalog = load_catalog(user)
    assert catalog.problems == ()
    turbo = by_id(catalog)["z-image-turbo"]
    assert turbo.spec.defaults.steps == 6 and turbo.spec.defaults.guidance == 0.0  # untouched keys kept
    assert turbo.aliases == ("fast",) and turbo.source == str(user)
    assert turbo.spec.weights.path == str(tmp_path / "models" / "turbo")
    assert turbo.spec.weights.repo_id == "Tongyi-MAI/Z-Image-Turbo"
    assert catalog.lora_dir == tmp_path / "my-loras" and catalog.lora_dir_configured
    engine_ids = ["z-image-turbo", "z-image-base", "z-image-edit", "my-finetune"]
    assert [v.spec.id for v in catalog.variants_for("zimage_engine")] == engine_ids
    assert by_id(catalog)["my-finetune"].spec.defaults.guidance == 1.0


def test_settings_lora_dir_wins(tmp_path: Path) -> None:
    user = write(tmp_path / "r.toml", '[loras]\ndir = "/from/toml"\n')
    assert load_catalog(user, lora_dir=tmp_path).lora_dir == tmp_path


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[variants.z-image-turbo.defaults]\nsteps = "eight"',
         '[variants.z-image-turbo] defaults.steps: must be an integer >= 1, got "eight"'),
        ("[variants.z-image-turbo.defaults]\nsteps = 0", "[variants.z-image-turbo] defaults.steps: must be an integer >= 1, got 0"),
        ("[variants.z-image-turbo.defaults]\nguidance = true",
         "[variants.z-image-turbo] defaults.guidance: must be a number >= 0, got true"),
        ("[variants.z-image-turbo.defaults]\nstepz = 4", "[variants.z-image-turbo] defaults.stepz: unknown key (allowed: steps,"),
        ("[variants.z-image-turbo]\ncolour = 1", "[variants.z-image-turbo] colour: unknown key"),
        ('[variants.z-image-turbo]\naliases = "t"', '[variants.z-image-turbo] aliases: must be a list of strings, got "t"'),
        ("[variants.z-image-turbo]\ndefaults = 3", "[variants.z-image-turbo] defaults: must be a table, got 3"),
        ("[variants.z-image-turbo.capabilities]\ncontrol = 1",
         "[variants.z-image-turbo] capabilities.control: must be true or false, got 1"),
        ("[variants.z-image-turbo.defaults]\nsteps = 101",
         "[variants.z-image-turbo] defaults.steps: 101 is out of range; use 1-100"),
        ("[variants.z-image-turbo.defaults]\nwidth = 1000",
         "[variants.z-image-turbo] defaults.width: 1000 is not allowed for this variant; use multiples of 16 from 256"),
        ("[variants.z-image-turbo.limits]\nmin_side = 4096",
         "[variants.z-image-turbo] limits.min_side: 4096 is greater than limits.max_side (2048)"),
        ('[variants.z-image-turbo]\nkind = "video"', '[variants.z-image-turbo] kind: must be one of turbo, base, edit, got "video"'),
        ('[variants.z-image-turbo]\naliases = ["Fast!"]', '[variants.z-image-turbo] aliases: "Fast!" is not a valid alias'),
        ('[variants.new]\ntitle = "x"', "[variants.new] plugin: missing (required)"),
        ('[variants.new]\nplugin = "p"\ntitle = "x"\nkind = "base"', "[variants.new] defaults.steps: missing (required)"),
        ('[variants.New_One]\nplugin = "p"\ntitle = "x"\nkind = "base"\ndefaults = {steps=1, guidance=0, shift=1}',
         "[variants.New_One]: variant ids must be lowercase kebab-case"),
        ("[variants.z-image-turbo.weights]\npath = 3", "[variants.z-image-turbo] weights.path: must be a string, got 3"),
    ],
)  # fmt: skip
def test_bad_user_table_is_named_and_the_builtin_variant_is_kept(tmp_path: Path, toml: str, message: str) -> None:
    user = write(tmp_path / "registry.toml", toml)
    catalog = load_catalog(user)
    assert len(catalog.problems) == 1, catalog.problems
    assert catalog.problems[0].startswith(f"{user}: {message}"), catalog.problems[0]
    assert catalog.problems[0].endswith(("(key ignored)", "the built-in z-image-turbo is kept)", "(variant refused)"))
    ids = [v.spec.id for v in catalog.variants]
    assert ids[:3] == ["z-image-turbo", "z-image-base", "z-image-edit"] and len(ids) == 3  # Turbo stays first
    shipped = by_id(load_catalog())["z-image-turbo"]
    assert (by_id(catalog)["z-image-turbo"].spec, by_id(catalog)["z-image-turbo"].aliases) == (shipped.spec, ("turbo",))


def test_a_typo_drops_only_that_key_and_keeps_the_users_other_values(tmp_path: Path) -> None:
    user = write(
        tmp_path / "registry.toml",
        """
        [variants.z-image-turbo]
        titel = "x"
        [variants.z-image-turbo.defaults]
        stepz = 4
        steps = 6
        """,
    )
    catalog = load_catalog(user)
    assert catalog.problems == (
        f"{user}: [variants.z-image-turbo] titel: unknown key (allowed: plugin, title, kind, description, aliases, "
        "shares, weights, defaults, limits, capabilities) (key ignored)",
        f"{user}: [variants.z-image-turbo] defaults.stepz: unknown key (allowed: steps, guidance, shift, width, "
        "height, strength, cfg_truncation, cfg_normalization, negative_prompt) (key ignored)",
    )
    turbo = catalog.variants[0]
    assert (turbo.spec.id, turbo.spec.title, turbo.spec.defaults.steps) == ("z-image-turbo", "Z-Image-Turbo", 6)


def test_shift_is_the_checkpoints_unless_a_user_file_sets_it(tmp_path: Path) -> None:
    assert all(v.spec.defaults.shift is None for v in load_catalog().variants)
    user = write(tmp_path / "registry.toml", "[variants.z-image-base.defaults]\nshift = 7\n")
    shifts = {v.spec.id: v.spec.defaults.shift for v in load_catalog(user).variants}
    assert shifts == {"z-image-turbo": None, "z-image-base": 7.0, "z-image-edit": None}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nport = 1", "[server]: unknown table (allowed: variants, loras, ray, runtime)"),
        ("[loras]\nfolder = 'x'", "[loras] folder: unknown key (allowed: dir)"),
        ("[loras]\ndir = 5", "[loras] dir: must be a string, got 5"),
        ("variants = 5", "variants: must be a table"),
        ("[variants\n", "not valid TOML"),
    ],
)
def test_file_level_problems_keep_the_builtin_variants(tmp_path: Path, toml: str, message: str) -> None:
    user = write(tmp_path / "registry.toml", toml)
    catalog = load_catalog(user)
    assert [p.startswith(f"{user}: {message}") for p in catalog.problems] == [True]
    assert len(catalog.variants) == 3


def test_former_per_variant_plugin_names_mean_the_engine_plugin(tmp_path: Path) -> None:
    user = write(
        tmp_path / "registry.toml",
        """
        [variants.z-image-turbo]
        plugin = "zimage_turbo"
        [variants.old-finetune]
        plugin = "zimage_base"
        title = "Old fine-tune"
        kind = "base"
        defaults = { steps = 30, guidance = 4, shift = 6 }
        [runtime]
        max_queue = 4
        """,
    )
    catalog = load_catalog(user)
    assert catalog.problems == ()  # [runtime] belongs to settings.py, not the catalogue
    assert {v.plugin for v in catalog.variants} == {"zimage_engine"}
    assert "old-finetune" in {v.spec.id for v in catalog.variants_for("zimage_engine")}


def test_published_repos_name_ids_and_aliases() -> None:
    repos = load_catalog().published_repos()
    assert repos["turbo"] == repos["z-image-turbo"] == "Tongyi-MAI/Z-Image-Turbo"
    assert repos["base"] == "Tongyi-MAI/Z-Image" and "edit" not in repos  # Edit's weights are not published


def test_explicit_missing_file_raises_and_implicit_is_skipped(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="nope.toml: registry file does not exist"):
        load_catalog(tmp_path / "nope.toml", required=True)
    assert load_catalog(tmp_path / "nope.toml").files == (str(BUILTIN_FILE),)


def test_broken_builtin_file_raises(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_catalog(builtin=write(tmp_path / "b.toml", "[["))
