"""The ``wbcv`` command line: parses arguments, calls the packages, prints. No logic of its own.

Exit status: 0 success; 2 usage or input error, or no space left on device / disk quota exceeded
(message naming the file, no traceback; the same command resumes once space is freed); 3 the run completed but
failed acceptance; 4 `wbcv verify` found a changed, added or missing file; 130 interrupted (the
same command resumes).
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wbcv import __version__
from wbcv.base.errors import WbcvError

if TYPE_CHECKING:
    from wbcv.base.records import DomainCheck
    from wbcv.inference.fields import FieldParams
    from wbcv.inference.segment import SegmentSummary
    from wbcv.validation.report import Signatory
    from wbcv.validation.results.run import ImportOptions

EXIT_OK = 0
EXIT_INPUT_ERROR = 2
EXIT_FAILED_ACCEPTANCE = 3
EXIT_TAMPERED = 4
LIBRARY_HELP = "labelled library: manifest.csv (path,label) or one sub-folder per label"
EXIT_INTERRUPTED = 130
STUDY_OUT_HELP = (
    "also seal the study as a run in this folder (the table's sha256, result.json, excluded.parquet); "
    "`wbcv report RUN` writes its report, `wbcv verify RUN` checks it"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _infer(args: argparse.Namespace) -> Path:
    """Shared by `infer` and `run`: classify the batch, print the summary, return the run."""
    from wbcv.inference.artifact import load_artifact
    from wbcv.inference.runner import InferenceParams, run_inference
    from wbcv.inference.slideset import read_slide_set

    if args.engine == "ray":
        from wbcv.inference.ray_engine import RayOptions, import_ray, run_inference_ray

        import_ray()  # before reading the batch: say at once when Ray is missing
        ray_options = RayOptions(address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor or 0.0)
    elif args.address or args.actors or args.gpus_per_actor:
        raise WbcvError("--address, --actors and --gpus-per-actor apply to --engine ray only")
    slides = read_slide_set(args.batch_dir)
    model = load_artifact(args.model)
    defaults = InferenceParams()
    params = InferenceParams(
        chunk_size=args.chunk_size or defaults.chunk_size,
        workers=args.workers or defaults.workers,
        threads_per_worker=args.threads_per_worker or defaults.threads_per_worker,
        max_image_pixels=args.max_image_pixels or defaults.max_image_pixels,
    )
    n_cells = sum(len(s.images) for s in slides.samples)
    print(f"batch {slides.root}: {len(slides.samples)} samples, {n_cells} cell images; model {model.model_id}")
    if slides.unlisted_dirs:
        print(
            f"warning: {len(slides.unlisted_dirs)} folder(s) not listed in {slides.manifest_path.name} are not "
            f"processed: {', '.join(slides.unlisted_dirs[:5])}{' ...' if len(slides.unlisted_dirs) > 5 else ''}",
            file=sys.stderr,
        )
    if args.engine == "ray":
        result = run_inference_ray(slides, model, args.out, params, ray_options, progress=not args.no_progress)
    else:
        result = run_inference(slides, model, args.out, params, progress=not args.no_progress)
    s = result.record.summary
    if result.already_finished:
        print(f"this run had already finished: {result.run_dir}")
    elif result.resumed:
        print(f"resumed: {result.slides_done_before} of {s.n_samples} slides were already done")
    print(
        f"run {result.record.run_id}: {s.n_cells} cells classified in {s.n_samples} samples, "
        f"{s.n_unclassified} unclassified, {s.n_skipped_cells} file(s) skipped"
        + (f", {s.n_unlisted_folders} unlisted folder(s)" if s.n_unlisted_folders else "")
    )
    if s.n_skipped_cells or s.n_unlisted_folders:
        print(f"  skipped files and folders, with reasons: {result.run_dir / 'skipped.parquet'}")
    _print_domain(result.record.domain)
    print(f"  {result.run_dir}")
    return result.run_dir


def _print_domain(d: DomainCheck) -> None:
    """One warning line when the batch (or a slide) is out of the model's operating domain."""
    if d.verdict == "out_of_domain":
        print(
            f"warning: batch is out of domain: score {d.score:.2f} above the model's threshold {d.threshold:.2f} "
            f"({len(d.slides_out_of_domain)} slide(s) out of domain); the model was not qualified on images like these",
            file=sys.stderr,
        )
    elif d.slides_out_of_domain:
        shown = ", ".join(d.slides_out_of_domain[:5]) + (" ..." if len(d.slides_out_of_domain) > 5 else "")
        print(f"warning: {len(d.slides_out_of_domain)} slide(s) out of domain: {shown}", file=sys.stderr)
    elif d.verdict == "not_checked":
        print("  domain: not checked (the model has no domain profile; add one with `wbcv profile`)")
    else:
        print(f"  domain: in domain (score {d.score:.2f}, threshold {d.threshold:.2f})")


def cmd_fit_rejection(args: argparse.Namespace) -> int:
    from wbcv.inference.rejection_fit import add_rejection

    card = add_rejection(args.model_dir, args.cells, args.negatives, args.other_lab_wbc, not args.no_locate_check)
    gate = card["wbc_gate"]
    print(
        f"white-cell gate added to {args.model_dir}: threshold {gate['threshold']:.3f}; refused "
        f"{gate['refused']['validation_wbc']:.2%} of the validation split's white cells and "
        f"{gate['refused']['negatives_in_sample']:.2%} of the negatives it was fitted on"
    )
    ood = card["ood"]
    rejected = ood.get("validation_rejected")
    share = f"; refused {rejected:.2%} of validation cells" if isinstance(rejected, float) else ""
    print(f"out-of-distribution score: threshold {ood['threshold']:.1f}{share}")
    if card["input"].get("locate_check"):
        print("locator check on: an image without a white cell is unclassified (no_cell_found)")
    return EXIT_OK


def cmd_fit_acquisition(args: argparse.Namespace) -> int:
    from wbcv.base.taxonomy import CELL_CLASSES
    from wbcv.inference.acquisition_fit import add_acquisition_reference

    reference = add_acquisition_reference(args.model_dir, args.cells)["acquisition_reference"]
    sizes = ", ".join(f"{c} {v:.3f}" for c, v in zip(CELL_CLASSES, reference[1:6], strict=True))
    print(
        f"acquisition reference added to {args.model_dir}: median cell {reference[0]:.3f} of the image's short "
        f"side ({sizes}); background OD {', '.join(f'{v:.3f}' for v in reference[6:9])}; nucleus hue "
        f"{reference[9]:.1f} degrees, chroma {reference[10]:.1f}"
    )
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from wbcv.inference.domain_fit import add_domain_profile

    section = add_domain_profile(args.model_dir, args.cells)
    print(
        f"domain profile added to {args.model_dir}: threshold {section['threshold']:.3f} "
        f"({section['threshold_from']}); {section['file']} sha256 {section['sha256'][:12]}"
    )
    return EXIT_OK


def cmd_adapt(args: argparse.Namespace) -> int:
    from wbcv.inference.adapt import AdaptRecipe, adapt, unlabelled_files
    from wbcv.inference.artifact import read_card, resolve_model_path
    from wbcv.inference.library import read_cell_library
    from wbcv.validation.model_evaluation import render_model_card, requalify_adapted

    unlabelled = [f for d in args.unlabelled for f in unlabelled_files(d)]
    labelled = read_cell_library(args.labelled) if args.labelled else []
    held_out = read_cell_library(args.evaluate) if args.evaluate else []
    overlap = {c.path.resolve() for c in labelled} & {c.path.resolve() for c in held_out}
    if overlap:
        raise WbcvError(
            f"{args.evaluate}: {len(overlap)} cell(s) also in --labelled, e.g. {sorted(overlap)[0]}; "
            "the evaluation must use cells the adaptation did not see"
        )
    recipe = AdaptRecipe(self_training=not args.no_self_training)
    out = adapt(resolve_model_path(args.model), args.out, unlabelled, labelled, recipe)
    if held_out:
        requalify_adapted(out, held_out)
        print(
            f"adapted model {out}: re-qualified on {len(held_out)} held-out labelled cells (model.json, MODEL_CARD.md)"
        )
    else:
        (out / "MODEL_CARD.md").write_text(render_model_card(read_card(out)))
        print(
            f"adapted model {out}: NOT re-qualified; evaluate it on labelled cells of the site it did not see "
            "(`wbcv adapt ... --evaluate LIBRARY`) before use"
        )
    return EXIT_OK


def cmd_infer(args: argparse.Namespace) -> int:
    _infer(args)
    return EXIT_OK


def _field_params(args: argparse.Namespace) -> FieldParams:
    from wbcv.inference.fields import FieldParams

    return FieldParams(
        method=args.method or "od", rbc_diameter_px=args.rbc_diameter_px or FieldParams().rbc_diameter_px
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from wbcv.inference.decode import DEFAULT_MAX_PIXELS
    from wbcv.inference.segment import segment_batch

    s = segment_batch(
        args.fields_dir, args.out, _field_params(args), args.max_image_pixels or DEFAULT_MAX_PIXELS, args.drop_edge_wbc
    )
    _print_segment(s)
    return EXIT_OK


def _print_segment(s: SegmentSummary) -> None:
    print(
        f"segmented {s.n_fields} field(s) of {s.n_samples} sample(s): {s.n_analysed} analysed, "
        f"{s.n_crops} white-cell crop(s), {s.n_rbc} red cells, {s.n_platelets} platelets"
    )
    edge = f"{s.n_wbc_at_edge} white cell(s) touch a field's edge"
    print(
        f"  {edge}"
        + (
            f", {s.n_wbc_dropped_at_edge} of them not cropped (--drop-edge-wbc)"
            if s.n_wbc_dropped_at_edge
            else ", kept and flagged"
        )
    )
    if s.skipped:
        print(f"  {sum(s.skipped.values())} field(s) with a skipped reason (fields.parquet):")
        for reason, n in s.skipped.most_common():
            print(f"    {n:>5}  {reason}")
    if s.samples_without_crops:
        shown_ids = ", ".join(s.samples_without_crops[:5]) + (" ..." if len(s.samples_without_crops) > 5 else "")
        print(
            f"warning: {len(s.samples_without_crops)} sample(s) have no white-cell crop, and `wbcv infer` will refuse "
            f"the batch until they are removed from the manifest or given fields: {shown_ids}",
            file=sys.stderr,
        )
    print(f"  batch for `wbcv infer`: {s.out_dir}")


def _segment_for_run(args: argparse.Namespace) -> None:
    """`run --fields`: segment FIELDS_DIR into BATCH_DIR (or reuse BATCH_DIR when it is that batch)."""
    from wbcv.inference.decode import DEFAULT_MAX_PIXELS
    from wbcv.inference.segment import segment_or_reuse

    if args.fields is None:
        if args.method or args.rbc_diameter_px or args.drop_edge_wbc:
            raise WbcvError("--method, --rbc-diameter-px and --drop-edge-wbc apply with --fields FIELDS_DIR only")
        return
    s = segment_or_reuse(
        args.fields,
        args.batch_dir,
        _field_params(args),
        args.max_image_pixels or DEFAULT_MAX_PIXELS,
        args.drop_edge_wbc,
    )
    if s is None:
        print(f"batch {args.batch_dir}: already segmented from {args.fields} with these settings (segment.json)")
    else:
        _print_segment(s)


def _print_comparison(result: object) -> int:
    from wbcv.validation.study import ComparisonResult
    from wbcv.validation.verdict import format_verdicts

    assert isinstance(result, ComparisonResult)
    print(format_verdicts(result.verdicts))
    if result.domain_failure:
        print(f"FAIL: {result.domain_failure}")
    plan = result.record.inputs.plan
    if plan is not None and plan.changed_fields:
        print(f"WARNING: the protocol differs from the signed plan in {len(plan.changed_fields)} field(s):")
        for change in plan.changed_fields:
            print(f"  {change}")
    print(
        f"comparison run: {result.run_dir} ({result.record.summary.exclusions_text}, each with its reason, "
        "in excluded.parquet)"
    )
    return EXIT_OK if result.passed else EXIT_FAILED_ACCEPTANCE


def _import_options(args: argparse.Namespace, protocol: Path | None) -> ImportOptions:
    from wbcv.validation.results.mapping import choose_mapping
    from wbcv.validation.results.run import ImportOptions

    analyzer = {k: getattr(args, k) for k in ("make", "model", "software_version", "serial")}
    return ImportOptions(choose_mapping(args.mapping, protocol), analyzer, args.total_cells)


def _print_import(result: object) -> None:
    from wbcv.validation.results.run import ResultsRun

    assert isinstance(result, ResultsRun)
    r, s = result.record, result.record.summary
    print(
        f"results run {r.run_id}: {s.n_samples} samples from {r.input.path.name} ({r.input.format}, "
        f"counted from {r.counted_from}); analyzer {r.analyzer.label}; mapping: {r.mapping.source}"
    )
    print(
        f"  {s.n_cells_reported} cells reported: {s.n_classified} classified, {s.n_unclassified} unclassified, "
        f"{s.n_cells_excluded} excluded; {s.n_samples_excluded} sample(s) excluded as a whole"
    )
    if s.unmapped_classes:
        listed = ", ".join(f"{name!r} {n}" for name, n in list(s.unmapped_classes.items())[:10])
        print(f"  classes not in the mapping (cells excluded): {listed}", file=sys.stderr)
    if s.n_rows_excluded:
        print(f"  {s.n_rows_excluded} exclusion(s), each with its reason: {result.run_dir / 'import_excluded.parquet'}")
    print(f"  {result.run_dir}")


def cmd_import_results(args: argparse.Namespace) -> int:
    from wbcv.validation.results.run import import_results

    options = _import_options(args, args.protocol)
    _print_import(import_results(args.results, args.format, args.out, options))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from wbcv.validation.study import compare_export, run_comparison

    if (args.run_dir is None) == (args.results is None):
        raise WbcvError("give either RUN_DIR (an inference or results run) or --results FILE --format F, not both")
    if args.results is None:
        return _print_comparison(
            run_comparison(args.run_dir, args.reference, args.protocol, args.out, plan_dir=args.plan)
        )
    if args.format is None:
        raise WbcvError("--results needs --format (csv, cells, hl7 or astm)")
    options = _import_options(args, args.protocol)
    out = args.out or Path("runs")
    imported, result = compare_export(args.results, args.format, options, args.reference, args.protocol, out)
    _print_import(imported)
    return _print_comparison(result)


def cmd_file(args: argparse.Namespace) -> int:
    from wbcv.base.atomic import sha256_file
    from wbcv.validation.validation_file import FILE_HTML, FILE_PDF, write_validation_file

    manifest = write_validation_file(args.runs, args.plan, args.out)
    print(f"validation file: {args.out / FILE_HTML}")
    print(f"  PDF: {args.out / FILE_PDF}")
    print(f"  manifest {manifest} sha256 {sha256_file(manifest)}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from wbcv.base.atomic import sha256_file
    from wbcv.validation.plan import write_plan

    manifest = write_plan(args.protocol, args.out)
    print(f"plan: {args.out} (plan.html, plan.pdf, plan.json)")
    print(f"  plan manifest {manifest} sha256 {sha256_file(manifest)}: give the folder to `wbcv compare --plan`")
    return EXIT_OK


def _signatories(args: argparse.Namespace) -> list[Signatory]:
    from wbcv.validation.report import Signatory

    out: list[Signatory] = []
    for role, value in (
        ("Prepared by", args.prepared_by),
        ("Reviewed by", args.reviewed_by),
        ("Approved by", args.approved_by),
    ):
        if value:
            name, _, function = value.partition(",")
            out.append(Signatory(role, name.strip(), function.strip()))
    return out


def _report(run_dir: Path, args: argparse.Namespace) -> None:
    from wbcv.validation.study_report import write_run_report

    result = write_run_report(run_dir, _signatories(args), out_dir=getattr(args, "report_out", None))
    print(f"report {result.document_id}: {result.html}")
    print(f"  PDF: {result.pdf}")
    print(f"  report manifest {result.manifest} sha256 {result.manifest_sha256}")


def cmd_report(args: argparse.Namespace) -> int:
    _report(args.run_dir, args)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from wbcv.validation.protocol import load_protocol
    from wbcv.validation.reference import read_reference
    from wbcv.validation.study import run_comparison

    # Check the protocol and the reference before spending time on inference.
    protocol = load_protocol(args.protocol)
    reference = read_reference(args.reference)
    _segment_for_run(args)
    run_dir = _infer(args)
    result = run_comparison(
        run_dir, args.reference, args.protocol, args.out, reference=reference, protocol=protocol, plan_dir=args.plan
    )
    status = _print_comparison(result)
    try:
        _report(result.run_dir, args)
    except WbcvError as e:
        raise WbcvError(
            f"{e}\n(the comparison run is complete; write its report with `wbcv report {result.run_dir}`)"
        ) from None
    return status


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from wbcv.inference.training import Recipe, train
    from wbcv.validation.model_evaluation import format_report, qualify_model

    recipe = Recipe()
    changes = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    recipe = dataclasses.replace(recipe, **changes)
    model_dir = train(
        args.cells,
        args.out,
        recipe,
        limit_per_class=args.limit_per_class,
        negative_folders=args.negatives,
        other_lab_wbc_folders=args.other_lab_wbc,
    )
    metrics = qualify_model(model_dir, args.cells)
    print(format_report({**metrics, "skipped": {}}))
    print(f"model artifact: {model_dir} (metrics, ablation and stress test are in its model.json)")
    return EXIT_OK


def _named_dir(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    if not Path(folder).is_dir():
        raise argparse.ArgumentTypeError(f"{folder}: not a folder")
    return name, Path(folder)


def cmd_qualify(args: argparse.Namespace) -> int:
    from wbcv.validation.model_evaluation import format_report, qualify_model

    metrics = qualify_model(args.model_dir, args.cells, other_labs=dict(args.lab), non_wbc=dict(args.non_wbc))
    print(format_report({**metrics, "skipped": {}}))
    print(f"model card: {args.model_dir / 'MODEL_CARD.md'}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from wbcv.inference.artifact import load_artifact
    from wbcv.inference.library import read_cell_library
    from wbcv.validation.model_evaluation import evaluate_cells, format_report

    model = load_artifact(args.model)
    cells = read_cell_library(args.cells_dir)
    report = evaluate_cells(model, cells)
    print(f"model {model.model_id} on {args.cells_dir} ({len(cells)} labelled cells)")
    print(format_report(report))
    if args.json:
        payload = {k: v for k, v in report.items() if k != "skipped"}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from collections import Counter

    from wbcv.fixtures.simulator import load_study_config, simulate_study
    from wbcv.inference.library import read_cell_library

    config = load_study_config(args.config) if args.config else None
    samples = simulate_study(
        read_cell_library(args.cells), args.out, args.samples, args.cells_per_slide, seed=args.seed, config=config
    )
    patterns = Counter(s.pattern for s in samples)
    print(
        f"simulated {len(samples)} samples x {args.cells_per_slide} cells in {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in patterns.most_common())
    )
    print(f"  reference: {args.out / 'XN_SAMPLE.csv'}; truth: {args.out / 'truth.csv'}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from wbcv.validation.integrity import verify_record

    v = verify_record(args.run_dir)
    print(f"run record {v.run_dir}/run.json sha256 {v.record_sha256}")
    if v.report_manifest_sha256:
        print(f"report manifest {v.run_dir}/report/manifest.json sha256 {v.report_manifest_sha256}")
    for linked in v.linked_runs:
        print(f"made from run {linked}")
    for log in v.verification_logs:
        print(f"verification log {log.path}: {len(log.entries)} record(s), last line sha256 {log.head_sha256}")
    for f in v.findings:
        print(f)
    intact = v.intact
    if args.inputs:
        intact = _verify_inputs(args.run_dir, intact) and intact
    print("intact: every file matches its recorded sha256" if intact else "NOT INTACT")
    return EXIT_OK if intact else EXIT_TAMPERED


def _verify_inputs(run_dir: Path, run_intact: bool) -> bool:
    """`wbcv verify --inputs`: the batch's images against the run's inputs.parquet, or a results run's
    exported file against its recorded sha256."""
    from wbcv.inference.input_check import verify_inputs

    if not run_intact:  # inputs.parquet itself may be what was changed: it cannot be trusted
        print("inputs not checked: the run record is not intact")
        return False
    iv = verify_inputs(run_dir)
    print(iv.describe())
    for finding in iv.findings:
        print(finding)
    return iv.intact


def _write_json(path: Path | None, payload: object) -> None:
    import json

    if path is not None:
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def cmd_precision(args: argparse.Namespace) -> int:
    from wbcv.validation.precision_table import format_report, parse_claim, report_payload, run_precision

    claims = [parse_claim(t, "sd") for t in args.claim_sd or []] + [parse_claim(t, "cv") for t in args.claim_cv or []]
    if args.out is None:
        report = run_precision(args.results, claims, confidence=args.confidence)
    else:
        from wbcv.validation.study_run import precision_run

        report, run = precision_run(args.results, args.out, claims, confidence=args.confidence)
    print(format_report(report))
    _write_json(args.json, report_payload(report))
    if args.out is not None:
        print(f"sealed precision run {run.run_dir} (report: `wbcv report {run.run_dir}`)")
    return EXIT_OK


def cmd_qualitative(args: argparse.Namespace) -> int:
    from wbcv.validation.flag_table import format_report, report_payload, run_qualitative
    from wbcv.validation.study_run import flag_protocol, qualitative_run

    if args.out is None:
        acceptance = None if args.protocol is None else flag_protocol(args.protocol)[1]
        report = run_qualitative(args.flags, confidence=args.confidence, acceptance=acceptance)
    else:
        report, run = qualitative_run(args.flags, args.out, confidence=args.confidence, protocol=args.protocol)
    print(format_report(report))
    _write_json(args.json, report_payload(report))
    if args.out is not None:
        print(f"sealed qualitative run {run.run_dir} (report: `wbcv report {run.run_dir}`)")
    return EXIT_FAILED_ACCEPTANCE if report.passed is False else EXIT_OK


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a confidence level between 0 and 1 (e.g. 0.95), got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number up to 65535, got {value}")
    return value


def cmd_dashboard(args: argparse.Namespace) -> int:
    from wbcv.dashboards.auth import load_credentials
    from wbcv.dashboards.server import make_dashboard_server

    credentials = load_credentials(args.auth_file)
    server = make_dashboard_server(args.runs, args.host, args.port, credentials, insecure=args.insecure)
    where = f"http://{args.host}:{server.server_port}/"
    guard = f"basic auth as {credentials.user}" if credentials else "no authentication"
    print(f"wbcv dashboard: runs in {args.runs}; serving {where} ({guard}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("wbcv dashboard: stopped")
    finally:
        server.server_close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wbcv",
        description="Verification and validation of image-based white-blood-cell differential analyzers.",
    )
    parser.add_argument("--version", action="version", version=f"wbcv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def signature_options(p: argparse.ArgumentParser) -> None:
        for flag in ("prepared-by", "reviewed-by", "approved-by"):
            p.add_argument(
                f"--{flag}",
                metavar="'NAME, FUNCTION'",
                help=f"printed in the report's signature block ({flag.replace('-', ' ')}); blank lines otherwise",
            )

    def results_options(p: argparse.ArgumentParser, required: bool) -> None:
        if required:
            p.add_argument("results", type=Path, metavar="FILE", help="the analyzer's exported results")
        else:
            p.add_argument("--results", type=Path, metavar="FILE", help="import this export first (needs --format)")
        p.add_argument("--format", choices=("csv", "cells", "hl7", "astm"), required=required, help="the export's kind")
        p.add_argument(
            "--mapping", type=Path, metavar="M.yaml", help="class mapping (default: the protocol's or wbcv's)"
        )
        p.add_argument("--make", help="analyzer maker, e.g. CellaVision (default: from the protocol or the file)")
        p.add_argument("--model", help="analyzer model, e.g. DC-1")
        p.add_argument("--software-version", help="the analyzer's software version")
        p.add_argument("--serial", help="the analyzer's serial number")
        p.add_argument(
            "--total-cells",
            type=_positive_int,
            help="cells counted per sample, for an export of percentages that does not state it",
        )

    def segment_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--method", choices=("od", "hsv"), help="od: the measured best (default); hsv: the Otsu baseline"
        )
        p.add_argument(
            "--rbc-diameter-px",
            type=_positive_float,
            help="a red cell's diameter in field pixels, the scale of every size rule (default: 144, Raabin-WBC)",
        )
        p.add_argument(
            "--drop-edge-wbc",
            action="store_true",
            help="do not crop white cells cut by the field's edge "
            "(for overlapping tiles: each cell then counts in the tile that holds it whole)",
        )

    def infer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("batch_dir", type=Path, metavar="BATCH_DIR")
        p.add_argument("--model", help="model artifact directory or bundled model name (default: the bundled default)")
        p.add_argument(
            "--out", type=Path, default=Path("runs"), metavar="RUNS_DIR", help="where runs go (default: ./runs)"
        )
        p.add_argument(
            "--workers",
            type=_positive_int,
            help="local engine: threads that decode and classify (default: one per core)",
        )
        p.add_argument("--threads-per-worker", type=_positive_int, help="torch threads of each worker (default: 1)")
        p.add_argument("--chunk-size", type=_positive_int, help="cells per forward pass (default: 256)")
        p.add_argument("--max-image-pixels", type=_positive_int, help="refuse larger images (default: 4096*4096)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--engine",
            choices=("local", "ray"),
            default="local",
            help="local: threads on this machine (default); ray: Ray Data on a Ray cluster, same results "
            "(needs the ray extra: pip install 'wbcv[ray]')",
        )
        p.add_argument(
            "--address",
            metavar="ADDR",
            help="Ray cluster: auto (RAY_ADDRESS or `ray start`), HOST:PORT, or ray://HOST:10001 "
            "(default: start a local Ray instance)",
        )
        p.add_argument("--actors", type=_positive_int, help="Ray classifier actors (default: half the cluster's CPUs)")
        p.add_argument(
            "--gpus-per-actor",
            type=_positive_float,
            help="run each Ray classifier actor's network on this many GPUs (e.g. 1 or 0.5; default: CPU)",
        )

    p = sub.add_parser(
        "infer",
        help="classify every cell of a batch of slide sets into a new run",
        description=(
            "Classify every cell image of a batch into a new run directory under --out: per-cell "
            "predictions and per-sample counts (Parquet), skipped files with reasons, and the inputs' "
            "content hashes. BATCH_DIR holds manifest.csv or manifest.yaml (field sample_id; optional "
            "slide_dir, imaged_volume_ul, calibration_factor, scanner, date, notes) and one folder of "
            "cell images per sample. An interrupted run resumes when the same command is run again."
        ),
    )
    infer_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "segment",
        help="find the white cells in whole microscope fields and write a batch of cell crops",
        description=(
            "Read FIELDS_DIR (a manifest with sample_id and one folder of field images per sample, as for "
            "`wbcv infer`), find every white cell in each field, count red cells and platelets, and write --out: "
            "the manifest, one folder of white-cell crops per sample (FIELDSTEM_x0_y0_x1_y1.png), fields.parquet "
            "(one row per field, skipped fields with their reason) and detections.parquet (one row per object). "
            "White cells touching a field's edge are kept and flagged (fields assumed not to overlap)."
        ),
    )
    p.add_argument("fields_dir", type=Path, metavar="FIELDS_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="BATCH_DIR", help="a new or empty folder")
    segment_options(p)
    p.add_argument("--max-image-pixels", type=_positive_int, help="refuse larger fields (default: 4096*4096)")
    p.set_defaults(func=cmd_segment)

    compare_help = (
        "Exit status 0 when every measurand passes, 3 when the comparison completed but failed acceptance, "
        "2 for input errors."
    )
    p = sub.add_parser(
        "compare",
        help="compare a finished inference run with reference counts under a validation protocol",
        description=(
            "Join the run's per-sample counts to the reference (Sysmex XN export or plain CSV), compute per-sample "
            "errors, method-comparison statistics and the acceptance verdict of the protocol (YAML), print the "
            "verdict table and write a comparison run record. " + compare_help
        ),
    )
    p.add_argument(
        "run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="an inference run or a results run (or --results)"
    )
    p.add_argument("--reference", type=Path, required=True, metavar="REF.csv")
    p.add_argument("--protocol", type=Path, required=True, metavar="P.yaml")
    p.add_argument(
        "--out",
        type=Path,
        metavar="RUNS_DIR",
        help="where the comparison run goes (default: beside RUN_DIR; with --results: ./runs, with the results run)",
    )
    results_options(p, required=False)
    p.add_argument(
        "--plan", type=Path, metavar="PLAN_DIR", help="the folder of `wbcv plan`: its hash goes into the run record"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "import-results",
        help="import an analyzer's exported results (CSV, per-cell table, HL7 ORU, ASTM) as a results run",
        description=(
            "Read a digital morphology analyzer's export in place of an inference run: a per-sample differential "
            "table (csv), a per-cell table with pre-classified and verified classes (cells), HL7 v2 ORU^R01 "
            "messages (hl7) or ASTM E1394 records (astm). Class names and observation codes are mapped to the five "
            "classes, unclassified or excluded by --mapping, the protocol's results_import section, or the defaults "
            "(README). Writes a sealed results run (counts.parquet as an inference run has, every exclusion with "
            "its reason) that `wbcv compare` accepts in place of an inference run."
        ),
    )
    results_options(p, required=True)
    p.add_argument("--out", type=Path, default=Path("runs"), metavar="RUNS_DIR", help="where runs go (default: ./runs)")
    p.add_argument("--protocol", type=Path, metavar="P.yaml", help="take the class mapping and analyzer from it")
    p.set_defaults(func=cmd_import_results)

    p = sub.add_parser(
        "plan",
        help="the validation plan before the data: criteria, statistics, sample size, case mix (HTML + PDF)",
        description=(
            "Write the plan of a protocol into DIR: plan.html, plan.pdf (Chromium), plan.json and manifest.json "
            "(sha256 of each and of the protocol). Holds the acceptance criteria, the statistics to be used, the "
            "sample-size calculation (exact Clopper-Pearson, with its assumptions), the case mix of plan.strata "
            "and a signature block. An existing plan is never overwritten."
        ),
    )
    p.add_argument("protocol", type=Path, metavar="P.yaml")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "file",
        help="the validation file: one document with a section per study (plan, comparisons, precision, flags)",
        description=(
            "Gather sealed study runs (comparison runs of `wbcv compare`/`wbcv run`, precision and qualitative "
            "runs of `wbcv precision --out`/`wbcv qualitative --out`) and optionally the plan of `wbcv plan` "
            "into one document: validation_file.html, validation_file.pdf and manifest.json in a new folder. "
            "A summary line per study with its outcome, then a section per study with its key results, citing "
            "each run record and its own report by sha256. Every run is verified first; an altered one is refused."
        ),
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--plan", type=Path, metavar="PLAN_DIR", help="the folder of `wbcv plan` the studies follow")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new folder for the validation file")
    p.set_defaults(func=cmd_file)

    p = sub.add_parser(
        "run",
        help="infer + compare in one command: a whole validation batch",
        description="Classify the batch (as `wbcv infer`) and compare it (as `wbcv compare`). "
        "With --fields FIELDS_DIR, first find the white cells in the whole fields of FIELDS_DIR "
        "and write their crops to BATCH_DIR (as `wbcv segment`; a BATCH_DIR already segmented from the same "
        "fields with the same settings is reused, so the command can be run again after an interruption). "
        + compare_help,
    )
    infer_options(p)
    p.add_argument(
        "--fields",
        type=Path,
        metavar="FIELDS_DIR",
        help="whole microscope fields to segment first; BATCH_DIR is then where the white-cell crops go",
    )
    segment_options(p)
    p.add_argument("--reference", type=Path, required=True, metavar="REF.csv")
    p.add_argument("--protocol", type=Path, required=True, metavar="P.yaml")
    p.add_argument("--plan", type=Path, metavar="PLAN_DIR", help="the folder of `wbcv plan` (as for `wbcv compare`)")
    signature_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="write the sign-off report (report.html + report.pdf) of a comparison, precision or qualitative run",
        description=(
            "Write RUN_DIR/report/report.html (self-contained, works offline), report.pdf (printed by the system "
            "Chromium, page numbers on every page) and manifest.json (their sha256 and run.json's). The report "
            "shows the verdict, the verification, Bland-Altman and regression plots of every measurand, the "
            "cell-level confusion matrix, every exclusion with its reason, the methods and a signature block. "
            "`wbcv run` writes it too. A precision or qualitative run (`--out` of those commands) gets its study "
            "report: the variance components or the flag agreement, the excluded rows, the methods, a signature "
            "block. An existing report is never overwritten (it may be signed): --out writes a copy elsewhere."
        ),
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a comparison run (`wbcv compare`, `wbcv run`) or a study run"
    )
    p.add_argument("--out", dest="report_out", type=Path, metavar="DIR", help="write the report here instead")
    signature_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "verify",
        help="check that no file of a finished run was changed, added or removed",
        description=(
            "Recompute the sha256 of every file in a finished run (inference, results or comparison) against its "
            "run.json, of its report against report/manifest.json, and, for a comparison, of the inference or results "
            "run it was made from; name each file that was changed, added or removed; check the hash chain of the "
            "dashboard's verification log of the cells (RUNS/.verification/RUN_ID.jsonl), naming each line edited or "
            "removed; print the manifests' own sha256. With --inputs, also re-hash the batch's input files (images, "
            "manifest, expert labels) against the "
            "inference run's inputs.parquet and name images changed, removed or added since (for a results run: the "
            "exported file against its recorded sha256). Exit status 0 when intact, 4 "
            "otherwise."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--inputs",
        action="store_true",
        help="also re-hash the run's inputs: the batch folder's files against its inputs.parquet (reads every "
        "image); for a results run, the exported results file against its recorded sha256",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "simulate",
        help="simulate a validation study with known truth from a labelled cell library",
        description=(
            "Draw each sample's true differential from a population model (healthy and pathological patterns), "
            "fill its slide with library images of those classes, and write the slide-set layout, a Sysmex-XN-style "
            "reference CSV with analyzer imprecision, marks, flags, technical rows and a rerun, and the truth "
            "(fixtures/simulator.py). Deterministic for a seed."
        ),
    )
    p.add_argument("--cells", type=Path, required=True, help=LIBRARY_HELP)
    p.add_argument("--samples", type=_positive_int, required=True)
    p.add_argument("--cells-per-slide", type=_positive_int, required=True)
    p.add_argument("--out", type=Path, required=True, metavar="BATCH_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--config",
        type=Path,
        metavar="study.yaml",
        help="population and analyzer settings (pattern weights, spreads, CVs, flags, reruns; see "
        "fixtures/samples/study.yaml); keys left out keep their defaults",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "train",
        help="train, calibrate and qualify an OVA + 3-class ensemble on a labelled cell library",
        description=(
            "Train the reference ensemble (inference/training.py: deduplication, stratified split, "
            "augmentation, class-balanced sampling, calibration, abstention threshold) and evaluate it on "
            "the held-out test split; metrics, ablation and stress test go into the model card."
        ),
    )
    p.add_argument("--cells", type=Path, required=True, help=LIBRARY_HELP)
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write, e.g. models/NAME")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed of split, sampling and augmentation (default: the recipe's)")
    p.add_argument("--limit-per-class", type=_positive_int, help="use only this many images per class (quick trials)")
    p.add_argument(
        "--negatives",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of images that are not white cells (red cells, platelets, debris) to train the heads to "
        "stay silent on and to fit the white-cell gate with (e.g. from `python -m wbcv.fixtures.field_crops "
        "--split train`)",
    )
    p.add_argument(
        "--other-lab-wbc",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of white cells of other laboratories (any class): positives of the white-cell gate",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "fit-rejection",
        help="add the refusal of what is not a mature white cell to a model artifact",
        description=(
            "Give the artifact the refusals it lacks, fitted on data named in its card: for image framing the "
            "locator's verdict (an image without a white cell is no_cell_found), the out-of-distribution score "
            "(training split's feature density, threshold on the validation split) when it has none, and the "
            "white-cell gate (logistic regression on the backbone features: the training split's cells and "
            "--other-lab-wbc against --negatives; threshold on the validation split). Writes the files beside "
            "the weights with their sha256 in model.json."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--cells", type=Path, required=True, metavar="LIBRARY", help="the library the model was trained on")
    p.add_argument(
        "--negatives", type=Path, nargs="+", required=True, metavar="DIR", help="folders: red cells, platelets, debris"
    )
    p.add_argument(
        "--other-lab-wbc", type=Path, nargs="+", default=[], metavar="DIR", help="folders of other labs' white cells"
    )
    p.add_argument(
        "--no-locate-check", action="store_true", help="image framing: do not run the locator for its no-cell verdict"
    )
    p.set_defaults(func=cmd_fit_rejection)

    p = sub.add_parser(
        "fit-acquisition",
        help="add the per-sample magnification, light and stain-hue correction to an image-framing model artifact",
        description=(
            "Measure the training split's cells (median located cell diameter as a share of the image, overall and "
            "per class, the background's optical density and the nucleus hue) and store them in model.json. Every "
            "later run, evaluation and qualification then frames each sample's images at the training magnification, "
            "light and stain hue "
            "(wbcv.inference.acquisition); the weights, and so the model id, are unchanged."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--cells", type=Path, required=True, metavar="LIBRARY", help="the library the model was trained on")
    p.set_defaults(func=cmd_fit_acquisition)

    p = sub.add_parser(
        "profile",
        help="add a domain profile to a model artifact (what it was qualified on)",
        description=(
            "Run the train and validation cells of the model's split file (MODEL_DIR/split.csv) through the model, "
            "fit the domain profile (backbone features and image statistics as scanned), set its threshold on "
            "resampled validation slides, and store it beside the weights with its sha256 in model.json. Every "
            "later `wbcv infer` / `wbcv run` then checks whether its batch lies inside that domain."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--cells", type=Path, required=True, metavar="LIBRARY", help="the library the model was trained on")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "adapt",
        help="adapt a model to a new site (scanner, stain) from its own images; writes a new artifact",
        description=(
            "Re-estimate the batch-normalisation statistics on the site's cells (--unlabelled, --labelled), "
            "self-train on the unlabelled cells the model is sure of, fine-tune on the labelled cells, re-fit the "
            "out-of-distribution density and the domain profile on the site; write a new artifact whose model.json "
            "records the parent (id, sha256), the data's hashes and the method. With --evaluate, evaluate it and its "
            "parent on labelled cells it did not see and write the figures into its card (re-qualification)."
        ),
    )
    p.add_argument(
        "--model", help="the parent: artifact directory or bundled model name (default: the bundled default)"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the adapted artifact is written")
    p.add_argument(
        "--unlabelled", type=Path, action="append", default=[], metavar="DIR", help="folder of the site's cell images"
    )
    p.add_argument("--labelled", type=Path, metavar="LIBRARY", help=f"the site's labelled cells ({LIBRARY_HELP})")
    p.add_argument(
        "--evaluate",
        type=Path,
        metavar="LIBRARY",
        help="labelled cells of the site, not in --labelled, to re-qualify on",
    )
    p.add_argument("--no-self-training", action="store_true", help="do not pseudo-label the unlabelled cells")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on expert-labelled cells",
        description=(
            "Classify every cell of a labelled folder (manifest.csv with path,label, or one sub-folder per "
            "label) and report accuracy, balanced accuracy, selective accuracy, unclassified rate, macro-F1, "
            "Cohen's kappa, ECE, per-class figures, the confusion matrix, and for labels outside the five "
            "classes how many came out unclassified."
        ),
    )
    p.add_argument("cells_dir", type=Path, metavar="CELLS_DIR")
    p.add_argument("--model", help="model artifact directory or bundled model name (default: the bundled default)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the report as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "qualify",
        help="(re)write a trained model's card: test split, ablation, stress test, other labs, non-WBC rejection",
        description=(
            "Evaluate MODEL_DIR on the held-out test split of its training library (its split.csv), the decision-rule "
            "ablation and the synthetic shift grid, and, when given, labelled cells of other laboratories "
            "(--lab NAME=DIR) and folders of objects that are not white cells (--non-wbc KIND=DIR); write the figures "
            "into model.json and MODEL_CARD.md. The weights are not touched."
        ),
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--cells", type=Path, required=True, help="the training library (for its test split)")
    p.add_argument("--lab", type=_named_dir, action="append", default=[], metavar="NAME=DIR", help=LIBRARY_HELP)
    p.add_argument("--non-wbc", type=_named_dir, action="append", default=[], metavar="KIND=DIR")
    p.set_defaults(func=cmd_qualify)

    p = sub.add_parser(
        "precision",
        help="precision study (CLSI EP05-A3 / EP15-A3): variance components and claim verification",
        description=(
            "Read a long CSV of replicate results (columns sample_id or level, day, run (optional), replicate, "
            "measurand, value, n_cells (optional)) and print, per sample and measurand, the nested-ANOVA variance "
            "components (repeatability, between-run, between-day, within-laboratory) as SD and CV %% with "
            "chi-square CIs, the binomial counting floor of class percentages, and with --claim-sd/--claim-cv the "
            "EP15-A3 verification against the upper verification limit. Rows that cannot be used are excluded, "
            "listed with their line and reason, and counted; an unknown column is an error."
        ),
    )
    p.add_argument("results", type=Path, metavar="RESULTS.csv")
    for kind in ("sd", "cv"):
        p.add_argument(
            f"--claim-{kind}",
            action="append",
            metavar="[MEASURAND:]R,WL",
            help=f"maker's claimed repeatability and within-laboratory {kind.upper()}"
            + (" (%%)" if kind == "cv" else "")
            + " for one measurand (NEUT%%:2.5,3.5) or all; repeatable",
        )
    p.add_argument("--confidence", type=_confidence, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--out", type=Path, metavar="RUNS", help=STUDY_OUT_HELP)
    p.set_defaults(func=cmd_precision)

    p = sub.add_parser(
        "qualitative",
        help="flag agreement (CLSI EP12-A2): PPA, NPA, OPA with Wilson and exact CIs",
        description=(
            "Read a CSV of analyzer flags against the reference finding (columns sample_id, flag, analyzer, "
            "reference; findings 1/0, pos/neg, +/-, yes/no) and print per flag the 2x2 table and the positive, "
            "negative and overall percent agreement with Wilson score and Clopper-Pearson CIs. A margin without "
            "samples is reported as undefined. Unusable rows are excluded with their line and reason."
        ),
    )
    p.add_argument("flags", type=Path, metavar="FLAGS.csv")
    p.add_argument(
        "--protocol",
        type=Path,
        metavar="P.yaml",
        help="judge each flag against the protocol's flag_acceptance (min_ppa, min_npa, basis); exit 3 on a failure",
    )
    p.add_argument("--confidence", type=_confidence, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--out", type=Path, metavar="RUNS", help=STUDY_OUT_HELP)
    p.set_defaults(func=cmd_qualitative)

    p = sub.add_parser(
        "dashboard",
        help="serve the review dashboard of the runs in a folder",
        description=(
            "Serve an interactive dashboard (Dash) of the comparison runs in RUNS_DIR: verification plots, "
            "Bland-Altman and regression panels, the cells of each sample, two runs side by side, coverage "
            "across runs. Listens on 127.0.0.1 unless --host says otherwise; a host other than loopback needs "
            "basic-auth credentials (WBCV_DASHBOARD_AUTH=user:password or --auth-file) or --insecure."
        ),
    )
    p.add_argument("--runs", type=Path, required=True, metavar="RUNS_DIR", help="the --out folder of `wbcv run`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8050, help="port to listen on (default: 8050)")
    p.add_argument("--auth-file", type=Path, metavar="FILE", help="basic-auth credentials: one 'user:password' line")
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback host without authentication (not advised)"
    )
    p.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except WbcvError as e:
        print(f"wbcv {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"\nwbcv {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = _out_of_space(e)
        if message is None:
            raise
        print(f"wbcv {args.command}: error: {message}", file=sys.stderr)
        return EXIT_INPUT_ERROR


_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded")


def _out_of_space(error: BaseException) -> str | None:
    """The one-line message for a full disk or exhausted quota (ENOSPC, EDQUOT, or polars' own error
    whose text says so), naming the file being written when known; None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        errno_ = getattr(current, "errno", None) if isinstance(current, OSError) else None
        if errno_ in (errno.ENOSPC, errno.EDQUOT) or any(t in str(current).lower() for t in _NO_SPACE_TEXTS):
            quota = errno_ == errno.EDQUOT or "quota" in str(current).lower()
            what = "no space left on device (disk quota exceeded)" if quota else "no space left on device"
            where = getattr(current, "filename", None) if isinstance(current, OSError) else None
            place = f" while writing {where}" if where else ""
            return f"{what}{place}; free some space and run the same command again to resume"
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
