"""Benchmarks behind ``imgsim bench``; each module returns a JSON-able dict."""
