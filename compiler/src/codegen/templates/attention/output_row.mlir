        %one{{h}} = arith.constant 1.0 : f32
        %inv{{h}} = arith.divf %one{{h}}, {{acc}} : f32
        %some{{h}} = arith.cmpf ogt, {{acc}}, %zero : f32
        %ob{{h}}0 = arith.muli %br{{h}}, %cDv : index
        %ob{{h}} = arith.addi %ob{{h}}0, %t2 : index
        %rin{{h}} = arith.cmpi ult, %row{{h}}, %cSq : index
