function dump_reference(outfile)
% DUMP_REFERENCE  Run every layer of the original 3DMM-STN (and MatConvNet's
% bilinear sampler) on fixed, seeded inputs and save inputs, outputs and
% derivatives in one .mat file for `python -m jax3dmmstn verify`.
%
%   dump_reference()                 writes matconvnet_reference.mat
%   dump_reference('my_dump.mat')    writes my_dump.mat
%
% Needs on the path: the original repository's layer/ and util/ folders
% (anilbas/3DMMasSTN) and MatConvNet's vl_nnbilinearsampler (run vl_setupnn).
% Runs in MATLAB (Image Processing Toolbox for imrotate) and in GNU Octave
% (the `image` package is loaded automatically).
%
% Key scheme (one variable per array, all arrays single unless noted):
%   <layer>__<case>__in_<arg>   forward input named as in the original's
%                               signature (idx and faces: double, 1-based;
%                               vl_nnmodel's struct is stored as in_shapeMU,
%                               in_shapePC)
%   <layer>__<case>__out_y      forward output
%   <layer>__<case>__dzdy       random derivative of the output fed to the
%                               backward call (the scalar p for the losses)
%   <layer>__<case>__out_<name>, __dzdy_<name>
%                               for a layer with several outputs (vl_nnsplit:
%                               y, r, t, s), each output and its derivative
%   <layer>__<case>__out_d<arg> backward output: derivative with respect to
%                               input <arg> (out_dX, out_dR, out_dGrid, ...)
%   meta__format                'jax3dmmstn-matconvnet-dump-1'
%   meta__platform              MATLAB/Octave version string
% <layer> is the original's function name (vl_nnr2R, vl_nnbilinearsampler,
% ...). <case> is a short name saying what the case exercises.
%
% This file is part of jax3dmmstn; it contains none of the original code,
% it only calls it.

if nargin < 1
  outfile = 'matconvnet_reference.mat';
end
if exist('OCTAVE_VERSION', 'builtin')
  pkg load image;  % imrotate, used by vl_nnvisibilitymask
end
needed = {'vl_nnsplit', 'vl_nnr2R', 'vl_nnmodel', 'vl_nnrotate3D', 'vl_nnprojection', ...
  'vl_nnlogScale2Scale', 'vl_nnscale2D', 'vl_nntranslate2D', 'vl_nnselection', ...
  'vl_nngrid', 'vl_nnbilinearsampler', 'vl_nnvisibilitymask', 'vl_nnvisibility', ...
  'vl_nneuclideanloss', 'vl_nnsse', 'vl_nnsymmetry', 'vl_nnsiamese', ...
  'visibilityNotSelf'};
for k = 1:numel(needed)
  if ~exist(needed{k})
    error('dump_reference: %s is not on the path (add the original''s layer/ and util/ folders and run MatConvNet''s vl_setupnn)', needed{k});
  end
end

seed_generators(7);
S = struct();
S.meta__format = 'jax3dmmstn-matconvnet-dump-1';
if exist('OCTAVE_VERSION', 'builtin')
  S.meta__platform = ['GNU Octave ' OCTAVE_VERSION];
else
  S.meta__platform = ['MATLAB ' version];
end

% ---------------------------------------------------------------- r2R
% Random rotations, the identity special case, tiny and large angles.
r_cases = {
  'b1',      rnd(1, 1, 3, 1) * 0.5
  'b4',      rnd(1, 1, 3, 4) * 0.7
  'zero_b2', zeros(1, 1, 3, 2, 'single')
  'mixed_b4', cat(4, zeros(1, 1, 3, 1, 'single'), rnd(1, 1, 3, 1), ...
                  single(reshape([0.3 -0.2 2.5], 1, 1, 3)), single(reshape([0 0 0.4], 1, 1, 3)))
  'tiny_b4', cat(4, single(reshape([1e-2 -2e-2 5e-3], 1, 1, 3)), ...
                 single(reshape([1e-3 0 0], 1, 1, 3)), single(reshape([-3e-4 2e-4 1e-4], 1, 1, 3)), ...
                 single(reshape([2e-6 -1e-6 0], 1, 1, 3)))
};
for c = 1:size(r_cases, 1)
  r = single(r_cases{c, 2});
  p = ['vl_nnr2R__' r_cases{c, 1} '__'];
  y = vl_nnr2R(r);
  dzdy = rnd(size(y));
  S.([p 'in_r']) = r;
  S.([p 'out_y']) = y;
  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dr']) = single(vl_nnr2R(r, dzdy));
end

% -------------------------------------------------------------- split
% theta = (r, t, logs, alpha) with the released model's D = 10 (the
% original hard-codes 16 entries). Several outputs: out_<name> and
% dzdy_<name> for each of y (alpha), r, t, s (logs). GNU Octave rejects the
% original's forward assignments into new variables (e.g.
% t(1,1:2,1,:) = X(1,1,4:5,:)); there only the backward pass is recorded.
for b = [1 3]
  X = rnd(1, 1, 16, b);
  p = sprintf('vl_nnsplit__b%d__', b);
  dy = rnd(1, 1, 10, b);  dr = rnd(1, 1, 3, b);  dt = rnd(1, 2, 1, b);  ds = rnd(1, 1, 1, b);
  S.([p 'in_X']) = X;
  try
    [y, r, t, s] = vl_nnsplit(X);
    S.([p 'out_y']) = y;  S.([p 'out_r']) = r;  S.([p 'out_t']) = t;  S.([p 'out_s']) = s;
  catch
    fprintf('dump_reference: vl_nnsplit forward failed here (%s); recording its backward only\n', lasterr);
  end
  S.([p 'dzdy_y']) = dy;  S.([p 'dzdy_r']) = dr;  S.([p 'dzdy_t']) = dt;  S.([p 'dzdy_s']) = ds;
  S.([p 'out_dX']) = single(vl_nnsplit(X, dy, dr, dt, ds));
end

% -------------------------------------------------------------- model
% shapeMU is 3N x 1 (x,y,z interleaved), shapePC 3N x D; values in mm.
model_cases = {'n49_d10_b1', 49, 10, 1; 'n64_d6_b3', 64, 6, 3};
for c = 1:size(model_cases, 1)
  [name, n, d, b] = model_cases{c, :};
  model.shapeMU = rnd(3 * n, 1) * 50;
  model.shapePC = rnd(3 * n, d) * 5;
  model.nverts = n;
  X = rnd(1, 1, d, b);
  p = ['vl_nnmodel__' name '__'];
  y = vl_nnmodel(X, model);
  dzdy = rnd(size(y));
  S.([p 'in_X']) = X;
  S.([p 'in_shapeMU']) = model.shapeMU;
  S.([p 'in_shapePC']) = model.shapePC;
  S.([p 'out_y']) = y;
  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(vl_nnmodel(X, model, dzdy));
end

% ------------------------------------------------------------ rotate3D
for b = [1 4]
  X = rnd(1, 3, 30, b) * 50;
  R = vl_nnr2R(rnd(1, 1, 3, b));
  p = sprintf('vl_nnrotate3D__b%d__', b);
  y = vl_nnrotate3D(X, R);
  dzdy = rnd(size(y));
  [dX, dR] = vl_nnrotate3D(X, R, dzdy);
  S.([p 'in_X']) = X;  S.([p 'in_R']) = R;
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(dX);  S.([p 'out_dR']) = single(dR);
end

% ---------------------------------------------------------- projection
for b = [1 3]
  X = rnd(1, 3, 25, b) * 50;
  p = sprintf('vl_nnprojection__b%d__', b);
  y = vl_nnprojection(X);
  dzdy = rnd(size(y));
  S.([p 'in_X']) = X;  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(vl_nnprojection(X, dzdy));
end

% ------------------------------------------------------ logScale2Scale
s_cases = {'b1', rnd(1, 1, 1, 1); 'b5', single(reshape([0 -40 25 1 -0.5], 1, 1, 1, 5))};
for c = 1:size(s_cases, 1)
  s = single(s_cases{c, 2});
  p = ['vl_nnlogScale2Scale__' s_cases{c, 1} '__'];
  y = vl_nnlogScale2Scale(s);
  dzdy = rnd(size(y));
  S.([p 'in_s']) = s;  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_ds']) = single(vl_nnlogScale2Scale(s, dzdy));
end

% ------------------------------------------------- scale2D, translate2D
for b = [1 4]
  X = rnd(1, 2, 40, b) * 60;
  Sc = single(0.5 + rand(1, 1, 1, b));
  p = sprintf('vl_nnscale2D__b%d__', b);
  y = vl_nnscale2D(X, Sc);
  dzdy = rnd(size(y));
  [dX, dS] = vl_nnscale2D(X, Sc, dzdy);
  S.([p 'in_X']) = X;  S.([p 'in_S']) = Sc;
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(dX);  S.([p 'out_dS']) = single(dS);

  T = rnd(1, 2, 1, b) * 20 + 112;
  p = sprintf('vl_nntranslate2D__b%d__', b);
  y = vl_nntranslate2D(X, T);
  dzdy = rnd(size(y));
  [dX, dT] = vl_nntranslate2D(X, T, dzdy);
  S.([p 'in_X']) = X;  S.([p 'in_T']) = T;
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(dX);  S.([p 'out_dT']) = single(dT);
end

% ----------------------------------------------------------- selection
% The released model's 21 AFLW landmarks on the 112 x 112 grid, and a
% random unique subset of a small point set.
aflw21 = [2489 2279 2178 2191 2314 2552 3283 3177 3182 3203 3208 3326 ...
          7177 4979 4536 4990 7272 6880 6664 6897 9128];
perm = randperm(50);
sel_cases = {'aflw21_b2', 112 * 112, aflw21, 2; 'rand_b1', 50, perm(1:12), 1};
for c = 1:size(sel_cases, 1)
  [name, n, idx, b] = sel_cases{c, :};
  X = rnd(1, 2, n, b) * 60 + 112;
  p = ['vl_nnselection__' name '__'];
  y = vl_nnselection(X, idx);
  dzdy = rnd(size(y));
  S.([p 'in_X']) = X;  S.([p 'in_idx']) = double(idx);
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(vl_nnselection(X, idx, dzdy));
end

% ---------------------------------------------------------------- grid
% Projected points in the 224 x 224 image frame; several grid sizes. A
% single image (B = 1) only in MATLAB: for it the original's
% `newgrid(1,:,:,:) = -Xo(2,:,:,:)` (new variable, 1 x gd x gd right-hand
% side) makes a 1 x 1 x gd x gd array in Octave, unlike MATLAB.
grid_cases = [8 3; 112 2];
if ~exist('OCTAVE_VERSION', 'builtin')
  grid_cases = [4 1; grid_cases];
end
for gb = grid_cases'
  gd = gb(1);  b = gb(2);
  X = single(rand(1, 2, gd * gd, b) * 260 - 18);
  p = sprintf('vl_nngrid__g%d_b%d__', gd, b);
  y = vl_nngrid(X);
  dzdy = rnd(size(y));
  S.([p 'in_X']) = X;  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(vl_nngrid(X, dzdy));
end

% ------------------------------------------------------ bilinearsampler
% grid is 2 x Ho x Wo x No, grid(1,...) vertical, grid(2,...) horizontal.
% 'centres' uses sizes with H-1, W-1 powers of two so that the pixel
% centres (and half-way points) are exact in single precision.
sampler_cases = {};
sampler_cases(end + 1, :) = {'square', rnd(8, 8, 3, 2), single(rand(2, 5, 6, 2) * 2.6 - 1.3)};
sampler_cases(end + 1, :) = {'rect', rnd(9, 17, 2, 1), single(rand(2, 7, 4, 1) * 2.4 - 1.2)};
sampler_cases(end + 1, :) = {'multigrid', rnd(7, 6, 3, 2), single(rand(2, 4, 5, 6) * 2.4 - 1.2)};
[gy, gx] = ndgrid(single((0:8) / 4 - 1), single((0:16) / 8 - 1));  % all centres and half-way points of 5 x 9
g = zeros(2, 9, 17, 1, 'single');  g(1, :, :) = gy;  g(2, :, :) = gx;
sampler_cases(end + 1, :) = {'centres', rnd(5, 9, 2, 1), g};
% Points around the borders: half a pixel before the first centre (floor
% = -1), just outside, exactly +-1, half a pixel beyond the last centre,
% and far outside; every vertical value paired with every horizontal one.
h = 6;  w = 5;
vy = single([-1 - 1 / (h - 1), -1 - 2.5 / (h - 1), -1, -1 + 0.3 / (h - 1), 0.1, 1, 1 + 0.5 / (h - 1), 1 + 1.5 / (h - 1), 3]);
vx = single([-1 - 0.6 / (w - 1), -1, -0.35, 1, 1 + 0.4 / (w - 1), -4]);
[gy, gx] = ndgrid(vy, vx);
g = zeros(2, numel(vy), numel(vx), 1, 'single');  g(1, :, :) = gy;  g(2, :, :) = gx;
sampler_cases(end + 1, :) = {'border', rnd(h, w, 2, 1), g};
sampler_cases(end + 1, :) = {'face224', single(rand(224, 224, 3, 2) * 255), ...
  single(vl_nngrid(single(rand(1, 2, 112 * 112, 2) * 200 + 12)))};
for c = 1:size(sampler_cases, 1)
  [name, X, grid] = sampler_cases{c, :};
  p = ['vl_nnbilinearsampler__' name '__'];
  y = vl_nnbilinearsampler(X, grid);
  dzdy = rnd(size(y));
  [dX, dGrid] = vl_nnbilinearsampler(X, grid, dzdy);
  S.([p 'in_X']) = X;  S.([p 'in_grid']) = grid;
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(dX);  S.([p 'out_dGrid']) = single(dGrid);
end

% ------------------------------------------------------ visibilitymask
% A bumpy face-like surface on a res x res UV grid (vertex k at row
% floor(k/res), column mod(k,res)), two triangles per cell, rotated.
vis_cases = {'res16_b3', 16, [0 0 0; 0 0.9 0; 0.4 -1.4 0.2]; ...
             'res32_b2', 32, [0.2 2.2 0; -0.3 0.5 0.1]};
for c = 1:size(vis_cases, 1)
  [name, res, rots] = vis_cases{c, :};
  [verts, faces] = grid_mesh(res);
  b = size(rots, 1);
  X = zeros(1, 3, res * res, b, 'single');
  for i = 1:b
    R = squeeze(vl_nnr2R(single(reshape(rots(i, :), 1, 1, 3))));
    X(1, :, :, i) = reshape(R * verts', 1, 3, res * res);
  end
  p = ['vl_nnvisibilitymask__' name '__'];
  S.([p 'in_X']) = X;  S.([p 'in_faces']) = double(faces);
  S.([p 'out_y']) = vl_nnvisibilitymask(X, faces);
end

% ---------------------------------------------------------- visibility
for b = [1 2]
  X = rnd(6, 6, 3, b);
  V = single(rand(6, 6, 3, b) > 0.4);
  p = sprintf('vl_nnvisibility__b%d__', b);
  y = vl_nnvisibility(X, V);
  dzdy = rnd(size(y));
  [dX, dV] = vl_nnvisibility(X, V, dzdy);
  S.([p 'in_X']) = X;  S.([p 'in_V']) = V;
  S.([p 'out_y']) = y;  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dX']) = single(dX);  S.([p 'out_dV']) = single(dV);
end

% -------------------------------------------------------------- losses
for b = [1 4]
  x = rnd(1, 2, 21, b) * 30 + 112;
  r = rnd(1, 2, 21, b) * 30 + 112;
  vis = single(rand(1, 1, 21, b) > 0.25);
  dzdy = single(0.5 + rand);
  p = sprintf('vl_nneuclideanloss__b%d__', b);
  S.([p 'in_x']) = x;  S.([p 'in_r']) = r;  S.([p 'in_vis']) = vis;
  S.([p 'out_y']) = single(vl_nneuclideanloss(x, r, vis));
  S.([p 'dzdy']) = dzdy;
  S.([p 'out_dx']) = single(vl_nneuclideanloss(x, r, vis, dzdy));
end
for b = [1 3]
  x = rnd(1, 1, 10, b);
  dzdy = single(0.5 + rand);
  p = sprintf('vl_nnsse__b%d__', b);
  S.([p 'in_x']) = x;  S.([p 'out_y']) = single(vl_nnsse(x));
  S.([p 'dzdy']) = dzdy;  S.([p 'out_dx']) = single(vl_nnsse(x, dzdy));
end
% Sampled textures with masked (exactly zero) pixels; H ~= W in one case.
loss_images = {'h6w6_b2', [6 6 3 2]; 'h5w8_b4', [5 8 3 4]};
for c = 1:size(loss_images, 1)
  [name, sz] = loss_images{c, :};
  x = single(rand(sz) * 255) .* single(rand(sz) > 0.3);
  for layer = {'vl_nnsymmetry', 'vl_nnsiamese'}
    f = str2func(layer{1});
    dzdy = single(0.5 + rand);
    p = [layer{1} '__' name '__'];
    S.([p 'in_x']) = x;  S.([p 'out_y']) = single(f(x));
    S.([p 'dzdy']) = dzdy;  S.([p 'out_dx']) = single(f(x, dzdy));
  end
end

save(outfile, '-v7', '-struct', 'S');
fprintf('dump_reference: wrote %d arrays to %s\n', numel(fieldnames(S)), outfile);
end

% ======================================================================
function seed_generators(seed)
% Seed the generators the same way in MATLAB and Octave.
if exist('rng')
  rng(seed);
else
  rand('state', seed);  randn('state', seed);
end
end

function a = rnd(varargin)
% Standard normal single array of the given size.
a = single(randn(varargin{:}));
end

function [verts, faces] = grid_mesh(res)
% verts: res^2 x 3 (mm); faces: 2 (res-1)^2 x 3, 1-based; vertex k (0-based)
% at u = mod(k,res)/(res-1), v = 1 - floor(k/res)/(res-1); both triangles
% of a cell face +z before rotation.
k = (0:res * res - 1)';
u = mod(k, res) / (res - 1);
v = 1 - floor(k / res) / (res - 1);
x = (u - 0.5) * 140;
y = (v - 0.5) * 170;
z = 60 * (1 - (x / 90) .^ 2 - (y / 110) .^ 2) + 8 * sin(x / 9) .* cos(y / 13);
verts = single([x y z]);
[col, row] = meshgrid(0:res - 2, 0:res - 2);
a = row(:) * res + col(:) + 1;            % top-left corner, 1-based
b = a + 1;  c = a + res;  d = c + 1;
faces = [a b c; b d c];
end
