"""Running a study: where it is stored, who may start the next trial, the worker processes, the
trial loop, and why a run stopped. Everything here touches the study's storage; the inputs and the
objective it runs come from :mod:`tlsearch.search`, which never imports this package."""
