"""What a user sees: the console header and epoch lines, progress, the W&B tracker, plots and the
end-of-run summary, with the maths behind the pictures (analysis).
"""
