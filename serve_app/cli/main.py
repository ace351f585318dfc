"""The ``lipserve`` command: render in-process, export ONNX, run the service, run the demo."""

from __future__ import annotations

import argparse
import sys
import time

from actors.errors import LipserveError


class ProgressBar:
    """A one-line progress bar on stderr (no extra dependency)."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width, self.t0 = stream, width, time.perf_counter()
        self.last = ""

    def __call__(self, stage: str, frac: float) -> None:
        frac = min(1.0, max(0.0, frac))
        filled = int(round(frac * self.width))
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}% {stage:<9} {time.perf_counter() - self.t0:6.1f}s"
        if line != self.last:
            self.stream.write(line)
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _cmd_render(args) -> int:
    from actors.pipeline import LocalRenderer, RenderOptions

    options = RenderOptions(
        backend=args.backend,
        checkpoint=args.checkpoint,
        device=args.device,
        mode="loop" if args.loop else "pingpong",
        box=tuple(args.box) if args.box else None,
        detector_model=args.detector,
        max_gap_s=args.max_face_gap,
        precision=args.precision,
        segment_frames=args.segment_frames,
        prefer_nvenc=args.nvenc,
        batch_size=args.batch_size,
        threads=args.threads,
        engine=args.engine,
    )
    if args.cache_dir:
        options.cache_dir = args.cache_dir
    bar = ProgressBar() if not args.quiet else None
    try:
        summary = LocalRenderer(options).render(args.audio, args.video, args.out, progress=bar)
    finally:
        if bar:
            bar.close()
    s = summary
    print(
        f"wrote {s.out_path}: {s.frames} frames at {s.fps:.3f} fps ({s.frames / s.fps:.2f} s), "
        f"{s.frames_per_second:.1f} frames/s achieved in {s.wall_seconds:.1f} s; faces found in "
        f"{s.template_faces_found}/{s.template_frames} template frames, {s.frames_without_face} output frames "
        f"without a face passed through"
    )
    return 0


def _cmd_export_onnx(args) -> int:
    from actors.models.wav2lip_export import export_onnx

    export_onnx(args.checkpoint, args.out, window=None if args.full_crop else "mouth")
    print(f"wrote {args.out}" + (" (whole 96x96 crop)" if args.full_crop else " (mouth window: what the paste reads)"))
    return 0


def _cmd_quantize_onnx(args) -> int:
    import tempfile

    from actors.models.wav2lip_quantize import calibration_inputs, quantize_int8

    with tempfile.TemporaryDirectory(prefix="lipserve-calibrate-") as cache:
        faces, mels = calibration_inputs(args.video, args.audio, cache, tuple(args.box) if args.box else None,
                                         args.frames)
        quantize_int8(args.onnx, args.out, faces, mels)
    print(f"wrote {args.out} (int8, calibrated on {len(faces)} frames of {args.video}; an option: "
          f"check its PSNR against the fp32 file, bench/bench_generator.py)")
    return 0


def _cmd_serve(args) -> int:
    from serve_app.cli.launcher import serve_forever

    serve_forever(args.config)
    return 0


def _cmd_demo(args) -> int:
    from serve_app.cli.demo import run_demo

    return run_demo(config_path=args.config, out_path=args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lipserve", description="Lip-synced talking-head video from audio + a template video")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render one video in this process (no cluster)")
    r.add_argument("--audio", required=True, help="speech audio (wav, mp3, m4a, ogg, flac, or a video's audio track)")
    r.add_argument("--video", required=True, help="template video of the presenter")
    r.add_argument("--out", required=True, help="output .mp4")
    r.add_argument("--backend", default="default", choices=["default", "mouth_warp", "wav2lip", "musetalk"],
                   help="default (weight-free), wav2lip or musetalk")
    r.add_argument("--checkpoint", help="generator weights: wav2lip .pth/.pt/.onnx, or the MuseTalk models "
                                        "directory (musetalkV15/, sd-vae/, whisper/)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on CUDA, fp32 on CPU; fp16: MuseTalk; bf16: Wav2Lip .onnx on OpenVINO (option)")
    r.add_argument("--engine", default="auto", choices=["auto", "onnxruntime", "openvino"],
                   help="what runs a Wav2Lip .onnx: auto = OpenVINO on CPU when installed, else onnxruntime")
    r.add_argument("--max-face-gap", type=float, default=1.0, metavar="SECONDS",
                   help="frames where the face detector misses the face for at most this long get "
                        "interpolated / held boxes (default 1 s); longer gaps pass through")
    r.add_argument("--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), help="face box override")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--loop", action="store_true", help="loop the template when the audio is longer")
    mode.add_argument("--pingpong", action="store_true", help="ping-pong the template (default)")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda", "openvino"],
                   help="openvino: the same as --engine openvino (CPU)")
    r.add_argument("--batch-size", type=int, default=32, help="generator frames per forward pass")
    r.add_argument("--threads", type=int, default=None,
                   help="generator CPU threads (default: the runtime's, one per core)")
    r.add_argument("--detector", help="ONNX face detector model path (default: embedded Haar cascade)")
    r.add_argument("--segment-frames", type=int, default=50)
    r.add_argument("--nvenc", action="store_true", help="use h264_nvenc when the GPU encoder is available")
    r.add_argument("--cache-dir", help="avatar cache directory")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_render)

    e = sub.add_parser("export-onnx", help="export a Wav2Lip checkpoint to ONNX")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--full-crop", action="store_true",
                   help="decode the whole 96x96 crop (default: only the mouth window the paste reads, ~1.3x faster)")
    e.set_defaults(func=_cmd_export_onnx)

    q = sub.add_parser("quantize-onnx", help="int8 (static QDQ) copy of a Wav2Lip ONNX export, calibrated on a "
                                             "template and speech (an option: it changes the pictures)")
    q.add_argument("--onnx", required=True, help="the fp32 .onnx from export-onnx")
    q.add_argument("--out", required=True)
    q.add_argument("--video", required=True, help="a template to calibrate on")
    q.add_argument("--audio", required=True, help="speech to calibrate on")
    q.add_argument("--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), help="face box override")
    q.add_argument("--frames", type=int, default=64, help="calibration frames (default 64)")
    q.set_defaults(func=_cmd_quantize_onnx)

    s = sub.add_parser("serve", help="run the Serve application (blocks)")
    s.add_argument("--config", default="configs/local.yaml")
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="start a local cluster + the app, render the bundled demo over HTTP")
    d.add_argument("--config", default="configs/local.yaml")
    d.add_argument("--out", default="demo_output.mp4")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LipserveError as exc:
        print(f"lipserve: error [{exc.code.value}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lipserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
