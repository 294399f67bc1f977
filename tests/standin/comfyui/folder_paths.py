"""The stand-in's `folder_paths`: the one function of ComfyUI's module that its save nodes call for a file
name, with ComfyUI's signature and answer. It counts the files already in the folder that start with the
prefix and returns the next number, as ComfyUI's does (so two processes saving into one folder at once
pick the same number: what the stack's per-instance prefix is for)."""

import os


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((os.path.abspath(output_dir), os.path.abspath(full_output_folder))) != os.path.abspath(
        output_dir
    ):
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
    counter = 1
    try:
        for name in os.listdir(full_output_folder):
            head, rest = name[: len(filename) + 1], name[len(filename) + 1 :]
            if head == filename + "_" and rest.split(".")[0].split("_")[0].isdigit():
                counter = max(counter, int(rest.split(".")[0].split("_")[0]) + 1)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder, filename_prefix
