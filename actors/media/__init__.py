"""Media I/O over PyAV: the one input-open function, audio decode, template frames, segment encode,
join + mux, and atomic writes. No Ray, no ffmpeg CLI."""
