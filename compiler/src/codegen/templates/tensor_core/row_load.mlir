            %{{o}}x{{q}} = scf.if %sin{{q}} -> (vector<4xi32>) {
              %{{o}}a{{q}}0 = arith.addi %sb{{q}}, %{{o}}kw : index
              %{{o}}a{{q}} = arith.addi %{{o}}a{{q}}0, %sw : index
              %{{o}}v{{q}} = memref.load %src[%{{o}}a{{q}}] : memref<?xvector<4xi32>>
              scf.yield %{{o}}v{{q}} : vector<4xi32>
            } else {
              scf.yield %zv : vector<4xi32>
            }
