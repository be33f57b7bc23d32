"""HTTP serving of a loaded Emu3 bundle: an OpenAI-compatible API, a request queue and a web page.

`create_app` (in `emu3.serve.app`) builds the FastAPI application; `emu3 serve` (in
`emu3.serve.cli`) loads a model and runs it with uvicorn. Importing this package imports nothing
heavy: FastAPI and uvicorn (the `serve` extra) are only needed by the modules that use them.
"""
