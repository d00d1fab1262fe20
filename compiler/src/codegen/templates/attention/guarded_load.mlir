        %{{t}} = scf.if %{{t}}in -> (vector<4xi32>) {
{{index}}
          %{{t}}v = memref.load %a{{k}}[%{{t}}x] : memref<{{n}}xvector<4xi32>>
          scf.yield %{{t}}v : vector<4xi32>
        } else {
          scf.yield %zv : vector<4xi32>
        }
