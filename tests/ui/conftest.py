"""The ``ui`` marker and the closing lines of a browser run (screenshot folder, phase times)."""

import ui_harness


def pytest_configure(config):
    config.addinivalue_line("markers", "ui: drives JupyterLab in headless Chromium (make test-ui; AEFLIB_UI_TESTS=1)")


def pytest_terminal_summary(terminalreporter):
    if ui_harness.REPORT:
        terminalreporter.section("JupyterLab browser test")
        for line in ui_harness.REPORT:
            terminalreporter.write_line(line)
